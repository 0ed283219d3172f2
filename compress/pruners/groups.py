"""The L1 rule that picks pruned groups (single weights, or the channels of a channel group).

GReg-1, the one-shot L1 baseline and the `filter` method all count with `keep_count`, so with the
same weights they remove exactly the same groups.
"""
from __future__ import annotations

import torch

from ..ranking import lowest_mask
from ..structured.budget import keep_count


def pick_pruned(scores: torch.Tensor, ratio: float, blocks: int = 1) -> torch.Tensor:
    """Boolean mask of pruned groups: the min(ceil(ratio·n), n−1) lowest scores (stable order); with
    `blocks` > 1, that rule within each of the equal blocks (channels a grouped conv reads or writes)."""
    n = scores.numel()
    return lowest_mask(scores, n - keep_count(n, ratio, blocks=blocks), blocks)


def per_row(values: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """One value per output row (filter) of `w`, broadcast to w's shape."""
    return values.view(-1, *([1] * (w.ndim - 1))).expand_as(w)
