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

import torch
from torch import nn

from ..errors import UserError
from ..config.prune import FilterOptions, L1Options, LayerRatio
from ..ranking import lowest
from ..structured import channel_importance, keep_counts, macs_with_widths, ratio_for_macs, widths_for_latency
from ..schedules import cubic_ramp
from ..structured import ChannelGroup, group_key
from .base import Pruner
from .channels import selected_groups, zero_dropped
from .groups import pruned_count

__all__ = ["FilterPruner", "L1FilterPruner", "FilterOptions", "LayerRatio"]  # the section dataclass is re-exported for callers


class FilterPruner(Pruner):
    name = "filter"
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
            self.dropped[key] = lowest(channel_importance(self.model, g, self.options.importance), drop, g.blocks)
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
