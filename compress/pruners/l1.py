"""One-shot L1 pruning with GReg-1's selection rule, the fair baseline for GReg: single weights, or
(granularity 'filter') channels cut by the filter method's machinery."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from ..schema import opt
from ..selection import get_module
from .base import MaskPruner, Pruner
from .filters import FilterOptions, FilterPruner
from ..structured import ChannelGroup, group_key
from .groups import pick_pruned, pruned_count
from .registry import register_pruner


@dataclass
class L1Options:
    sparsity: float = opt(0.9, "Fraction of groups removed in every layer (at most n−1 per layer).",
                          lo=0.0, hi=1.0, hi_open=True, sparsity_goal=True)
    granularity: Literal["weight", "filter"] = opt("weight", "Single weights, or channels: then it is method "
                                                   "'filter' cutting `sparsity` of every coupled channel group "
                                                   "at prune_after (what GReg's filter mode picks).")
    prune_after: float = opt(0.3, "Fraction of the epochs trained dense before the one-shot prune. Set it to "
                             "GReg's pick_after to remove exactly the groups GReg-1 picks.",
                             lo=0.0, hi=1.0, hi_open=True)
    decay_1d: bool = opt(True, "Weight decay also on biases and BatchNorm parameters, as GReg's default, so the "
                         "baseline trains exactly as GReg-1 does.")


@register_pruner("l1")
class L1Pruner(MaskPruner):
    """One-shot layer-wise L1 pruning with GReg-1's selection rule: the fair baseline for GReg."""

    Options = L1Options

    def __init__(self, options: L1Options):
        super().__init__(options)
        self.options: L1Options = options

    def begin_epoch(self, epoch: int) -> None:
        if epoch == math.floor(self.options.prune_after * self.plan.epochs) and not self.masks:
            for n in self.layers:
                w = get_module(self.model, n).weight
                self.masks[n] = (~pick_pruned(w.detach().abs(), self.options.sparsity)).contiguous()
            self.apply_masks()

    @classmethod
    def class_for(cls, options: L1Options) -> type[Pruner]:
        return L1FilterPruner if options.granularity == "filter" else cls


class L1FilterPruner(FilterPruner):
    """Method 'l1' with granularity 'filter': the one-shot filter cut at `prune_after`, counting exactly as
    GReg-1's pick (min(ceil(r·n), n−1) per group, no rounding to multiples of 8), so on the same weights
    it removes the channels GReg's filter mode removes: the paper's like-for-like baseline."""

    name = "l1"
    Options = L1Options

    def __init__(self, options: L1Options):
        super().__init__(FilterOptions(ratio=options.sparsity, prune_after=options.prune_after, round_to=1,
                                       decay_1d=options.decay_1d))
        self.l1_options = options

    def _keep_for_ratio(self, groups: list[ChannelGroup], ratio: float, fixed: dict[str, float]) -> dict[str, int]:
        return {group_key(g): g.size - pruned_count(g.size, fixed.get(group_key(g), ratio), g.blocks) for g in groups}
