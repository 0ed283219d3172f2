"""Pruning groups (single weights or whole filters/output rows) and the L1 rule that picks them.

GReg-1 and the one-shot L1 baseline both call `pick_pruned`, so with the same weights they
remove exactly the same groups.
"""
from __future__ import annotations

from typing import Literal

import torch

from ..structured.budget import keep_count

Granularity = Literal["weight", "filter"]


def group_scores(w: torch.Tensor, granularity: Granularity) -> torch.Tensor:
    """Importance per group: |w| per weight, or mean |w| per filter (output channel / output row)."""
    w = w.detach().abs()
    return w if granularity == "weight" else w.flatten(1).mean(1)


def pick_pruned(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """Boolean mask of pruned groups: the min(ceil(ratio·n), n−1) lowest scores (stable order)."""
    flat = scores.flatten()
    n = flat.numel()
    n_pruned = n - keep_count(n, ratio)
    pruned = torch.zeros(n, dtype=torch.bool, device=flat.device)
    if n_pruned > 0:
        pruned[torch.argsort(flat, stable=True)[:n_pruned]] = True
    return pruned.view_as(scores)


def to_weight_shape(group_values: torch.Tensor, w: torch.Tensor, granularity: Granularity) -> torch.Tensor:
    """Broadcast per-group values to the weight's shape."""
    if granularity == "weight":
        return group_values
    return group_values.view(-1, *([1] * (w.ndim - 1))).expand_as(w)
