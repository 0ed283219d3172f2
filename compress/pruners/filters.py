"""Filter (channel) pruning over coupled channel groups, removed physically at freeze.

How much: a ratio per group (`ratio`, overridden by `layer_ratios`), or one ratio found so that
the model's MACs drop by `flops_target`; never to zero width, optionally keeping multiples of
`round_to` (or powers of two, `pow2`). When: once (`oneshot`, at prune_after) or `gradual` (cubic, every epoch from
prune_after to prune_until). What: the lowest-importance channels (L1/L2 norm of the producing
filters, summed over the producers a residual add couples). Dropped channels are zeroed in every
coupled module (filters, biases, BatchNorm γ and β, depthwise filters) and kept at zero through
fine-tuning, so the freeze stage can cut them out exactly.
"""
from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..errors import UserError
from ..schema import opt
from ..structured import channel_importance, keep_count, lowest, macs_with_widths, ratio_for_macs
from .base import Pruner
from .channels import selected_groups, zero_dropped


@dataclass
class LayerRatio:
    layer: str = opt("", "Glob matched against the producing layers of a channel group (e.g. 'layers.2.*').")
    ratio: float = opt(0.5, "Fraction of that group's channels removed.", lo=0.0, hi=1.0, hi_open=True)


@dataclass
class FilterOptions:
    ratio: float = opt(0.5, "Fraction of the channels removed in every prunable group (at most n−1).",
                       lo=0.0, hi=1.0, hi_open=True)
    layer_ratios: list[LayerRatio] = opt([], "Per-group ratios, first match wins: [[prune.filter.layer_ratios]] "
                                         "tables with layer (glob) and ratio.")
    flops_target: float = opt(0.0, "Divide the model's MACs by this factor (e.g. 2.5); one ratio for every group "
                              "not in layer_ratios is found for it. 0: use ratio.", lo=0.0)
    importance: Literal["l1", "l2"] = opt("l1", "Channel score: L1 or L2 norm of the producing filters.")
    schedule: Literal["oneshot", "gradual"] = opt("oneshot", "Cut once at prune_after, or gradually (cubic, each "
                                                  "epoch) from prune_after to prune_until.")
    prune_after: float = opt(0.3, "Fraction of the epochs trained dense before the (first) cut.",
                             lo=0.0, hi=1.0, hi_open=True)
    prune_until: float = opt(0.6, "gradual: fraction of the epochs by which the final widths are reached.",
                             lo=0.0, hi=1.0, hi_open=True)
    round_to: int = opt(1, "Keep a multiple of this many channels per group (e.g. 8: SIMD-friendly widths).",
                        lo=1)
    pow2: bool = opt(False, "Keep every cut width a power of two (round_to is then ignored): on our CPU, "
                     "onnxruntime ran such widths far faster than others (README).")


class FilterPruner(Pruner):
    name = "filter"
    options: FilterOptions

    def __init__(self, options: FilterOptions):
        super().__init__(options)
        self.dropped: dict[str, torch.Tensor] = {}  # group key -> dropped channel indices
        self.groups = {}
        self.final_keep: dict[str, int] = {}
        self.planned: dict = {}

    def attach(self, model: nn.Module, layers: list[str], plan) -> None:
        super().attach(model, layers, plan)
        o = self.options
        if o.schedule == "gradual" and o.prune_until <= o.prune_after:
            raise UserError(f"prune.filter.prune_until: expected more than prune_after ({o.prune_after}), "
                            f"got {o.prune_until}")
        if 0 < o.flops_target <= 1:
            raise UserError(f"prune.filter.flops_target: expected 0 (off) or a factor above 1, got {o.flops_target}")
        self.groups, self.whole = selected_groups(model, layers, plan.input_shape, "prune.method 'filter'")
        fixed = {}
        for key, g in self.groups.items():
            rule = next((r for r in o.layer_ratios if any(fnmatch.fnmatch(p, r.layer) for p in g.producers)), None)
            if rule is not None:
                fixed[key] = rule.ratio
        ratio = o.ratio
        if o.flops_target > 0:
            try:
                ratio, _, _ = ratio_for_macs(model, list(self.groups.values()), plan.input_shape, o.flops_target,
                                             o.round_to, fixed, o.pow2)
            except ValueError as e:
                raise UserError(f"prune.filter.flops_target: {e}") from None
        self.final_keep = {k: keep_count(g.size, fixed.get(k, ratio), o.round_to, o.pow2)
                           for k, g in self.groups.items()}
        dense = macs_with_widths(model, [], {}, plan.input_shape)
        after = macs_with_widths(model, list(self.groups.values()), self.final_keep, plan.input_shape)
        self.planned = {"ratio": ratio, "macs_before": dense, "macs_after": after, "macs_factor": dense / after}

    def _cut_epochs(self) -> tuple[int, int]:
        o, epochs = self.options, self.plan.epochs
        start = math.floor(o.prune_after * epochs)
        end = max(start, math.floor(o.prune_until * epochs)) if o.schedule == "gradual" else start
        return start, end

    def begin_epoch(self, epoch: int) -> None:
        start, end = self._cut_epochs()
        if not start <= epoch <= end:
            return
        progress = 1.0 - (1.0 - (epoch - start + 1) / (end - start + 1)) ** 3  # cubic, 1 at the last cut
        for key, g in self.groups.items():
            keep = g.size - round((g.size - self.final_keep[key]) * progress)
            self.dropped[key] = lowest(channel_importance(self.model, g, self.options.importance), keep)
        self._apply()

    def _apply(self) -> None:
        zero_dropped(self.model, self.groups, self.dropped)

    def after_step(self, step: int, lr: float) -> None:
        if self.dropped:
            self._apply()

    def log_state(self) -> dict:
        return {"channels_dropped": sum(len(v) for v in self.dropped.values())} if self.dropped else {}

    def state_dict(self) -> dict:
        return {"dropped": dict(self.dropped)}

    def load_state_dict(self, state: dict) -> None:
        self.dropped = dict(state["dropped"])
        self._apply()

    def summary(self) -> dict:
        return {**self.planned, "flops_target": self.options.flops_target, "schedule": self.options.schedule,
                "groups_cut": sum(1 for v in self.dropped.values() if len(v)), "kept_whole": self.whole,
                "channels_removed": {k: int(len(v)) for k, v in self.dropped.items()}}

    def freeze(self) -> nn.Module:
        self._apply()
        return super().freeze()
