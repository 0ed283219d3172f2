"""Which dimension of a layer's weight holds its output channels and which its input channels: 0 and
1 for convolutions and Linear, the other way round for transposed convolutions (weight [in, out, k…]);
which tensors hold a layer's output channels (a recurrent layer's are in four)."""
from __future__ import annotations

import torch
from torch import nn

TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def out_dim(m: nn.Module) -> int:
    """The weight dimension of `m`'s output channels."""
    return 1 if isinstance(m, TRANSPOSED) else 0


def in_dim(m: nn.Module) -> int:
    """The weight dimension of `m`'s input channels."""
    return 1 - out_dim(m)


def rows_first(t: torch.Tensor, m: nn.Module) -> torch.Tensor:
    """`t` (`m`'s weight, or its gradient) as a view with the output channels first; writes go through."""
    return t.transpose(0, 1) if out_dim(m) else t


RECURRENT = (nn.RNN, nn.LSTM, nn.GRU)


def gates(m: nn.Module) -> int:
    """Rows per hidden unit in each of a recurrent layer's weights: 4 (LSTM), 3 (GRU), 1 (RNN)."""
    return {nn.LSTM: 4, nn.GRU: 3}.get(type(m), 1) if isinstance(m, RECURRENT) else 1



def take_columns(weight: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """`weight` [out, in, k…] with row r keeping only its input columns `columns[r]` ([out, kept])."""
    return weight.gather(1, columns.view(*columns.shape, *[1] * (weight.dim() - 2)).expand(-1, -1, *weight.shape[2:]))
