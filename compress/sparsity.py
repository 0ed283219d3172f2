"""Sparsity statistics over plain weights."""
from __future__ import annotations

import torch
from torch import nn

from .selection import get_module


def layer_sparsity(model: nn.Module, layers: list[str]) -> dict[str, float]:
    """Fraction of exact zeros in each named layer's (effective) weight."""
    out = {}
    with torch.no_grad():
        for name in layers:
            w = get_module(model, name).weight
            out[name] = float((w == 0).sum()) / w.numel()
    return out


def global_sparsity(model: nn.Module, layers: list[str]) -> float:
    """Fraction of exact zeros over all named layers' weights together."""
    zeros = total = 0
    with torch.no_grad():
        for name in layers:
            w = get_module(model, name).weight
            zeros += int((w == 0).sum())
            total += w.numel()
    return zeros / max(total, 1)
