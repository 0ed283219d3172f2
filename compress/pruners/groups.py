"""The L1 rule that picks pruned groups (single weights, or the channels of a channel group).

GReg-1, the one-shot L1 baseline and the `filter` method all count with `keep_count`, so with the
same weights they remove exactly the same groups.
"""
from __future__ import annotations

import torch

from ..structured.budget import keep_count


def pick_pruned(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """Boolean mask of pruned groups: the min(ceil(ratio·n), n−1) lowest scores (stable order)."""
    flat = scores.flatten()
    n = flat.numel()
    n_pruned = n - keep_count(n, ratio)
    pruned = torch.zeros(n, dtype=torch.bool, device=flat.device)
    if n_pruned > 0:
        pruned[torch.argsort(flat, stable=True)[:n_pruned]] = True
    return pruned.view_as(scores)


def per_row(values: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """One value per output row (filter) of `w`, broadcast to w's shape."""
    return values.view(-1, *([1] * (w.ndim - 1))).expand_as(w)
