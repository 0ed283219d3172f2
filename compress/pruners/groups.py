"""The L1 rule that picks pruned groups (single weights, or the channels of a channel group).

GReg-1, GReg-2's pick and the one-shot L1 baseline (both granularities) count with `pruned_count`,
the official GReg count, so with the same weights they remove exactly the same groups.
"""
from __future__ import annotations

import math

import torch

from ..ranking import lowest_mask


def pruned_count(n: int, ratio: float, blocks: int = 1) -> int:
    """Groups pruned of `n`: min(ceil(ratio·n), n−1) as the official GReg code counts (a float product
    such as 0.55·100 = 55.00000000000001 rounds up to 56 there, and here); with `blocks` > 1 that rule
    within each of the equal blocks (channels a grouped conv reads or writes), the counts added."""
    per = n // blocks
    return blocks * min(math.ceil(ratio * per), per - 1)


def pick_pruned(scores: torch.Tensor, ratio: float, blocks: int = 1) -> torch.Tensor:
    """Boolean mask of pruned groups: the `pruned_count` lowest scores (stable order), per block."""
    return lowest_mask(scores, pruned_count(scores.numel(), ratio, blocks), blocks)


def per_row(values: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """One value per output row (filter) of `w`, broadcast to w's shape."""
    return values.view(-1, *([1] * (w.ndim - 1))).expand_as(w)
