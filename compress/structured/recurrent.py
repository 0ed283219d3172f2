"""Cutting nn.RNN / nn.LSTM / nn.GRU: hidden units of a one-layer, one-direction layer, and input
features of any.

A hidden unit u is row g·hidden + u of weight_ih_l0, weight_hh_l0 and both biases for each gate g,
and column u of weight_hh_l0 (the unit's state read back at the next step). With those rows zeroed
the unit's pre-activations are 0 at every step, so from a zero initial state its output stays exactly
0 (LSTM: c ← σ(0)·c + σ(0)·tanh(0); GRU: h ← σ(0)·h + (1 − σ(0))·tanh(0); RNN: tanh(0) or relu(0)):
removing it is exact.
"""
from __future__ import annotations

import torch
from torch import nn

from .weights import gates


def _set(m: nn.RNNBase, name: str, value: torch.Tensor) -> None:
    old = getattr(m, name)
    # nn.RNNBase updates its list of flat weights in place on assignment: give it a list of its own
    # first, so that an undo (undo.snapshot, which keeps the old list) gets the old weights back
    m._flat_weights = list(m._flat_weights)
    setattr(m, name, nn.Parameter(value.clone(), requires_grad=old.requires_grad))


@torch.no_grad()
def cut_recurrent_hidden(m: nn.RNNBase, keep: torch.Tensor) -> None:
    """Keep hidden units `keep` (sorted) of a one-layer, one-direction recurrent layer, in place."""
    if m.num_layers != 1 or m.bidirectional or getattr(m, "proj_size", 0):
        raise ValueError(f"{type(m).__name__}: only one-layer, one-direction layers without projection "
                         "have their hidden units cut")
    keep = torch.as_tensor(keep, dtype=torch.long)
    rows = torch.cat([g * m.hidden_size + keep for g in range(gates(m))])
    _set(m, "weight_ih_l0", m.weight_ih_l0[rows])
    _set(m, "weight_hh_l0", m.weight_hh_l0[rows][:, keep])
    if m.bias:
        _set(m, "bias_ih_l0", m.bias_ih_l0[rows])
        _set(m, "bias_hh_l0", m.bias_hh_l0[rows])
    m.hidden_size = len(keep)


@torch.no_grad()
def cut_recurrent_inputs(m: nn.RNNBase, cols: torch.Tensor) -> None:
    """Keep input features `cols` of a recurrent layer (its first layer's input weights, both directions)."""
    for name in ("weight_ih_l0", "weight_ih_l0_reverse"):
        if hasattr(m, name):
            _set(m, name, getattr(m, name)[:, cols])
    m.input_size = len(cols)
