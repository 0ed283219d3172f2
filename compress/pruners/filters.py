"""Filter (channel) pruning over coupled channel groups, removed physically at freeze.

How much: a ratio per group (`ratio`, overridden by `layer_ratios`), or one ratio found so that
the model's MACs drop by `flops_target`, or its measured latency by `latency_target` (candidate
widths timed in the runtime before training; the widths found are checkpointed, so replaying the
run does not time again); never to zero width, optionally keeping multiples of
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
from ..structured import channel_importance, drop_lowest, keep_counts, macs_with_widths, ratio_for_macs, widths_for_latency
from ..schedules import cubic_ramp
from ..structured import ChannelGroup
from .base import Pruner
from .channels import selected_groups, zero_dropped
from .registry import register_pruner


@dataclass
class LayerRatio:
    layer: str = opt("", "Glob matched against the producing layers of a channel group (e.g. 'layers.2.*').")
    ratio: float = opt(0.5, "Fraction of that group's channels removed.", lo=0.0, hi=1.0, hi_open=True)


AUTO_ROUND_TO = 8  # widths a multiple of 8: SIMD-friendly on x86 (AVX2: 8 floats) and ARM (NEON: 4)


@dataclass
class FilterOptions:
    ratio: float = opt(0.5, "Fraction of the channels removed in every prunable group (at most n−1).",
                       lo=0.0, hi=1.0, hi_open=True)
    layer_ratios: list[LayerRatio] = opt([], "Per-group ratios, first match wins: [[prune.filter.layer_ratios]] "
                                         "tables with layer (glob) and ratio.")
    flops_target: float = opt(0.0, "Divide the model's MACs by this factor (e.g. 2.5); one ratio for every group "
                              "not in layer_ratios is found for it. 0: use ratio.", lo=0.0)
    latency_target: float = opt(0.0, "Divide the model's measured latency by this factor (e.g. 2): one ratio for "
                                "every group not in layer_ratios is found by timing candidate widths in "
                                "onnxruntime at [freeze] latency_batch_size / latency_threads before training "
                                "(NetAdapt-style). 0: off.", lo=0.0)
    importance: Literal["l1", "l2"] = opt("l1", "Channel score: L1 or L2 norm of the producing filters.")
    schedule: Literal["oneshot", "gradual"] = opt("oneshot", "Cut once at prune_after, or gradually (cubic, each "
                                                  "epoch) from prune_after to prune_until.")
    prune_after: float = opt(0.3, "Fraction of the epochs trained dense before the (first) cut.",
                             lo=0.0, hi=1.0, hi_open=True)
    prune_until: float = opt(0.6, "gradual: fraction of the epochs by which the final widths are reached.",
                             lo=0.0, hi=1.0, hi_open=True)
    round_to: int = opt(0, "Keep a multiple of this many channels per group (1: any width). 0: automatic — "
                        "multiples of 8 for ratio and flops_target cuts (any width ran up to 4.4x slower than "
                        "multiples of 8 in onnxruntime: docs/channels.md), and latency_target searches several roundings.",
                        lo=0)
    pow2: bool = opt(False, "Keep every cut width a power of two (round_to is then ignored): on our CPU, "
                     "onnxruntime ran such widths far faster than others (docs/channels.md).")
    decay_1d: bool = opt(False, "Weight decay also on biases and BatchNorm parameters (default: weights only).")

    def rounding(self) -> int:
        """round_to as used for ratio and flops_target cuts (latency_target reads 0 as 'search')."""
        return self.round_to or AUTO_ROUND_TO

    def check(self, where: str) -> None:
        if self.flops_target > 0 and self.latency_target > 0:
            raise UserError(f"{where}.latency_target: set flops_target or latency_target, not both")
        for name in ("flops_target", "latency_target"):
            if 0 < getattr(self, name) <= 1:
                raise UserError(f"{where}.{name}: expected 0 (off) or a factor above 1, got {getattr(self, name)}")


@register_pruner("filter")
class FilterPruner(Pruner):
    Options = FilterOptions

    def __init__(self, options: FilterOptions):
        super().__init__(options)
        self.options: FilterOptions = options
        self.dropped: dict[str, torch.Tensor] = {}  # group key -> dropped channel indices
        self.groups: dict[str, ChannelGroup] = {}
        self.whole: dict[str, str] = {}  # selected groups kept whole, with the reason
        self.final_keep: dict[str, int] = {}
        self.planned: dict = {}

    def attach(self, model: nn.Module, layers: list[str], plan) -> None:
        super().attach(model, layers, plan)
        o = self.options
        if o.schedule == "gradual" and o.prune_until <= o.prune_after:
            raise UserError(f"prune.filter.prune_until: expected more than prune_after ({o.prune_after}), "
                            f"got {o.prune_until}")
        o.check("prune.filter")
        self.groups, self.whole = selected_groups(model, layers, plan.input_shape, "prune.method 'filter'")
        fixed = {}
        for key, g in self.groups.items():
            rule = next((r for r in o.layer_ratios if any(fnmatch.fnmatch(p, r.layer) for p in g.producers)), None)
            if rule is not None:
                fixed[key] = rule.ratio
        if o.latency_target > 0 and plan.latency_ratio is None:
            return  # replaying a checkpoint: load_state_dict brings the widths that were measured
        ratio, found = o.ratio, {}
        groups = list(self.groups.values())
        try:
            if o.flops_target > 0:
                ratio, _, _ = ratio_for_macs(model, groups, plan.input_shape, o.flops_target, o.rounding(), fixed,
                                           o.pow2)
            elif o.latency_target > 0:
                found = widths_for_latency(model, groups, o.latency_target, plan.latency_ratio, o.round_to, fixed,
                                           o.pow2)
        except ValueError as e:
            raise UserError(f"prune.filter.{'flops' if o.flops_target > 0 else 'latency'}_target: {e}") from None
        if found:
            ratio, self.final_keep = found["ratio"], found["keep"]
            found = {"latency_ratio_measured": found["latency_ratio"], "round_to_found": found["round_to"],
                     "pow2_found": found["pow2"], "latency_probes": found["probes"],
                     "latency_refined": found["refined"]}
        else:
            self.final_keep = self._keep_for_ratio(groups, ratio, fixed)
        dense = macs_with_widths(model, [], {}, plan.input_shape)
        after = macs_with_widths(model, groups, self.final_keep, plan.input_shape)
        self.planned = {"ratio": ratio, "macs_before": dense, "macs_after": after, "macs_factor": dense / after,
                        **found}


    def _keep_for_ratio(self, groups: list[ChannelGroup], ratio: float, fixed: dict[str, float]) -> dict[str, int]:
        """Channels kept per group key when cutting `ratio` (rounded as the options say)."""
        o = self.options
        return keep_counts(groups, ratio, o.rounding(), o.pow2, fixed)
    def _cut_epochs(self) -> tuple[int, int]:
        o, epochs = self.options, self.plan.epochs
        start = math.floor(o.prune_after * epochs)
        end = max(start, math.floor(o.prune_until * epochs)) if o.schedule == "gradual" else start
        return start, end

    def begin_epoch(self, epoch: int) -> None:
        start, end = self._cut_epochs()
        if not start <= epoch <= end:
            return
        if not self.final_keep:
            raise UserError("prune.filter.latency_target: the widths are timed in onnxruntime when training "
                            "starts; run it through the pipeline (`sparsepipe run`), which provides the timing")
        progress = cubic_ramp((epoch - start + 1) / (end - start + 1))  # 1 at the last cut
        for key, g in self.groups.items():
            drop = round((g.size - self.final_keep[key]) * progress / g.blocks) * g.blocks  # even per block
            self.dropped[key] = drop_lowest(g, channel_importance(self.model, g, self.options.importance), drop)
        self._apply()

    def _apply(self) -> None:
        zero_dropped(self.model, self.groups, self.dropped)

    def after_step(self, step: int, lr: float) -> None:
        if self.dropped:
            self._apply()

    def log_state(self) -> dict:
        return {"channels_dropped": sum(len(v) for v in self.dropped.values())} if self.dropped else {}

    def state_dict(self) -> dict:
        return {"dropped": dict(self.dropped), "final_keep": dict(self.final_keep), "planned": dict(self.planned)}

    def load_state_dict(self, state: dict) -> None:
        self.dropped = dict(state["dropped"])
        self.final_keep = dict(state.get("final_keep", self.final_keep))
        self.planned = dict(state.get("planned", self.planned))
        self._apply()

    def summary(self) -> dict:
        return {**self.planned, "flops_target": self.options.flops_target,
                "latency_target": self.options.latency_target, "schedule": self.options.schedule,
                "groups_cut": sum(1 for v in self.dropped.values() if len(v)), "kept_whole": self.whole,
                "channels_removed": {k: int(len(v)) for k, v in self.dropped.items()}}

    def freeze(self) -> nn.Module:
        self._apply()
        return super().freeze()
