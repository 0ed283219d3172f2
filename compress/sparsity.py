"""Sparsity statistics over plain weights: zero counts and magnitude quantiles."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from .selection import layer_weight


@torch.no_grad()
def count_zeros(tensors: Iterable[torch.Tensor]) -> tuple[int, int]:
    """(exact zeros, entries) over all `tensors` together."""
    zeros = total = 0
    for t in tensors:
        zeros += int((t == 0).sum())
        total += t.numel()
    return zeros, total


def layer_sparsity(model: nn.Module, layers: list[str]) -> dict[str, float]:
    """Fraction of exact zeros in each named layer's (effective) weight."""
    out = {}
    for name in layers:
        zeros, total = count_zeros([layer_weight(model, name)])
        out[name] = zeros / total
    return out


def global_sparsity(model: nn.Module, layers: list[str]) -> float:
    """Fraction of exact zeros over all named layers' weights together."""
    zeros, total = count_zeros(layer_weight(model, n) for n in layers)
    return zeros / max(total, 1)


@torch.no_grad()
def magnitude_quantile(tensors: Iterable[torch.Tensor], fraction: float) -> float:
    """The magnitude d at which a `fraction` of all entries of `tensors` together have |x| ≤ d."""
    flat = torch.cat([t.detach().abs().flatten() for t in tensors])
    k = max(int(round(fraction * flat.numel())), 1)
    return float(flat.kthvalue(k).values)
