"""How many channels each group keeps: per-group ratios, or one ratio found for a MAC target.

Pure counting plus a bisection: the MACs of a candidate set of widths are measured on a pruned
copy of the model, so every layer kind the removal supports is counted the way it will run.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from ..flops import count_macs
from .graph import ChannelGroup
from .remove import remove_channels


def keep_count(n: int, ratio: float, round_to: int = 1, pow2: bool = False, blocks: int = 1) -> int:
    """Channels kept of `n` when cutting `ratio` of them: never 0; a multiple of round_to when n allows,
    or with pow2 the nearest power of two (at most n's largest). With `blocks` > 1 (a grouped conv's
    channel groups) the rule applies to each of the equal blocks and the counts add up.

    With round_to = 1 this keeps n − min(ceil(ratio·n), n − 1), GReg's and the L1 rule's count.
    """
    if blocks > 1:
        return blocks * keep_count(n // blocks, ratio, round_to, pow2)
    if pow2 and ratio > 0:
        nearest = 2 ** round(math.log2(max(n * (1 - ratio), 1)))
        return min(nearest, 2 ** int(math.log2(n)))
    if round_to == 1:
        return n - min(math.ceil(ratio * n - 1e-9), n - 1)
    return min(max(round_to, int(round(n * (1 - ratio) / round_to)) * round_to), n)


def first_kept(group: ChannelGroup, count: int) -> torch.Tensor:
    """Channel indices keeping `count` of `group`: the first ones of each block (for counting MACs)."""
    width, per = group.size // group.blocks, count // group.blocks
    return torch.cat([b * width + torch.arange(per) for b in range(group.blocks)])


def group_key(group: ChannelGroup) -> str:
    """A group's stable name: its first producer."""
    return group.producers[0]


def macs_with_widths(model: nn.Module, groups: list[ChannelGroup], keep: dict[str, int],
                     input_shape: tuple[int, ...]) -> int:
    """MACs of one sample after cutting each group to keep[group key] channels (on a copy)."""
    smaller, groups = copy.deepcopy(model), copy.deepcopy(groups)
    for g in groups:
        k = keep.get(group_key(g), g.size)
        if k < g.size:
            remove_channels(smaller, g, first_kept(g, k), constants_folded=True)  # counting only
    return count_macs(smaller, input_shape)["dense"]


def ratio_for_macs(model: nn.Module, groups: list[ChannelGroup], input_shape: tuple[int, ...], factor: float,
                   round_to: int = 1, fixed: dict[str, float] | None = None,
                   pow2: bool = False) -> tuple[float, int, int]:
    """The smallest ratio, cut from every group not in `fixed` (group key → its own ratio), that
    divides the model's MACs by at least `factor`. Returns (ratio, dense MACs, MACs after).
    Raises ValueError when even the deepest cut allowed misses the target."""
    fixed = fixed or {}
    dense = macs_with_widths(model, [], {}, input_shape)
    goal = dense / factor

    def macs(ratio: float) -> int:
        keep = {group_key(g): keep_count(g.size, fixed.get(group_key(g), ratio), round_to, pow2, g.blocks)
                for g in groups}
        return macs_with_widths(model, groups, keep, input_shape)

    hi = 0.999
    if macs(hi) > goal:
        raise ValueError(f"a {factor:g}x MAC reduction is out of reach: cutting all but one channel "
                         f"(or round_to) of every prunable group leaves {dense / macs(hi):.2f}x")
    lo = 0.0
    for _ in range(20):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if macs(mid) <= goal else (mid, hi)
    return hi, dense, macs(hi)
