"""GReg-1 / GReg-2: pruning by growing L2 regularisation (Wang et al., ICLR 2021).

After backward, grad += reg ⊙ w on top of weight decay, one reg value per group (weight or
filter). GReg-1 picks the pruned groups once (lowest L1, `groups.pick_pruned`: min(ceil(r·n), n−1))
and grows their reg by reg_granularity_prune every update_reg_interval steps until reg_upper_limit.
GReg-2 first grows reg on all weights to reg_upper_limit_pick, picks by current magnitude (logging
the overlap with the plain L1 pick), then grows the pruned groups and relaxes the kept ones
(reg_granularity_recover). Then: stabilise for stabilize_steps with the penalty on, remove the
pruned groups (mask), fine-tune.

The official code's rules, each the default here: penalty updates at steps 0, k, 2k, … counted from
the start of the penalty phase, each before that step's penalty applies; the penalty is applied at
the update that ends the last layer and stabilize_steps steps more, then the groups are removed
(after stabilize_steps + 1 penalised steps). The official code then fine-tunes with a new optimizer and
its own learning-rate schedule; here the run's optimizer and schedule go on (one training run) unless
reset_optimizer clears the optimizer's state at the removal. Filter mode also stops on the kept/pruned magnitude
ratio (EMA 0.9): GReg-1 ends a layer when every layer's ratio has reached mag_ratio_limit, GReg-2
ends each layer when its own has; GReg-2's average runs during picking too (against the groups a
pick would take at that moment).

Filter mode works on coupled channel groups (compress.structured): a channel's score and penalty
cover every filter that produces it (a residual add couples several), and removal zeroes the
channel in every coupled module (BatchNorm γ and β included), so the freeze stage cuts it out
physically. The channels picked are those the `filter` method picks from the same weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
import math

import torch
from torch import nn

from ..errors import UserError
from ..schema import opt
from ..selection import get_module
from ..structured import ChannelGroup, channel_importance, drop_lowest, widths_for_latency
from ..structured.recurrent import unit_rows
from ..structured.weights import RECURRENT, rows_first
from .base import MaskPruner
from .registry import register_pruner
from .channels import selected_groups, zero_dropped
from ..ranking import lowest_mask
from .groups import per_row, pruned_count


@dataclass
class GRegOptions:
    variant: Literal[1, 2] = opt(1, "1: GReg-1 (fixed L1 pick, growing penalty); 2: GReg-2 (penalty on all, "
                                 "pick by magnitude, then grow/recover).")
    granularity: Literal["weight", "filter"] = opt("weight", "Groups: single weights (unstructured) or channels "
                                                   "(structured: coupled filters cut together, removed "
                                                   "physically at freeze; the logits stay whole).")
    sparsity: float = opt(0.9, "Fraction of groups pruned in every layer or channel group: min(ceil(r·n), n−1) "
                          "groups, the official count.", lo=0.0, hi=1.0, hi_open=True, sparsity_goal=True)
    pick_after: float = opt(0.3, "Fraction of the epochs trained dense before regularisation starts.",
                            lo=0.0, hi=1.0, hi_open=True)
    reg_by: float = opt(0.7, "With reg_granularity_prune = 0: fraction of the epochs by which the penalty "
                        "phases end (granularities are derived from it).", lo=0.0, hi=1.0, lo_open=True)
    update_reg_interval: int = opt(5, "Steps between penalty updates, counted from the first step of the "
                                   "penalty phase (updates at its steps 0, k, 2k, …, as the official code).", lo=1)
    reg_upper_limit: float = opt(1.0, "Penalty at which a layer's pruned groups are done.", lo=0.0, lo_open=True)
    reg_granularity_prune: float = opt(0.0, "Penalty increment on pruned groups (official 1e-4; 0 = derived "
                                       "from reg_by so that short runs finish).", lo=0.0)
    reg_upper_limit_pick: float = opt(1e-2, "GReg-2: penalty on all weights before picking.", lo=0.0, lo_open=True)
    reg_granularity_pick: float = opt(0.0, "GReg-2: increment while picking (official 1e-5; 0 = derived).", lo=0.0)
    reg_granularity_recover: float = opt(-1e-4, "GReg-2: increment on kept groups after the pick (≤ 0).", hi=0.0)
    stabilize_steps: int = opt(0, "Steps with the full penalty on after the update that ends the last layer; "
                               "the groups are removed after that update's step and these (official 10000 on "
                               "CIFAR).", lo=0)
    latency_target: float = opt(0.0, "Filter mode: instead of `sparsity`, cut the one fraction of every channel "
                                "group that divides the measured onnxruntime latency by this factor (see "
                                "prune.filter.latency_target). 0: off.", lo=0.0)
    mag_ratio_limit: float = opt(1000.0, "Filter mode: the penalty also stops on mean|kept|/mean|pruned| (EMA "
                                 "0.9), as the official code: GReg-1 ends a layer when every layer's ratio has "
                                 "reached this, GReg-2 each layer when its own has (its average also runs "
                                 "while picking).", lo=1.0)
    reset_optimizer: bool = opt(False, "At removal, clear the optimizer's state (momentum), as the official code, "
                                "which fine-tunes the pruned model with a new optimizer. false: the run's "
                                "optimizer goes on, as one training run.")
    decay_1d: bool = opt(True, "Weight decay also on biases and BatchNorm parameters, as the official GReg code "
                         "(SGD over model.parameters()). false: weights only.")

    def check(self, where: str) -> None:
        if self.latency_target > 0 and self.granularity != "filter":
            raise UserError(f"{where}.latency_target: only granularity 'filter' removes channels; "
                            "use sparsity for single weights")
        if 0 < self.latency_target <= 1:
            raise UserError(f"{where}.latency_target: expected 0 (off) or a factor above 1, got {self.latency_target}")

PHASES = ("dense", "pick", "prune", "stabilize", "finetune")


@register_pruner("greg")
class GRegPruner(MaskPruner):
    name = "greg"
    Options = GRegOptions

    def __init__(self, options: GRegOptions):
        super().__init__(options)
        self.options: GRegOptions = options
        self.phase = "dense"
        self.reg: dict[str, torch.Tensor] = {}
        self.pruned: dict[str, torch.Tensor] = {}    # per layer: bool per group
        self.l1_pick: dict[str, torch.Tensor] = {}
        self.done: dict[str, bool] = {}
        self.mag_ratio: dict[str, float] = {}
        self.l1_overlap: float | None = None
        self.stable_steps = 0                       # steps taken since the stabilize phase began
        self.reg_start = 0                          # the step at which the penalty phase began
        self.gran_pick = self.gran_prune = 0.0
        self.units: list[str] = []  # what carries one penalty vector: a layer, or (filter mode) a channel group
        self.groups: dict[str, ChannelGroup] = {}  # filter mode: channel groups by key
        self.whole: dict[str, str] = {}             # filter mode: selected groups kept whole, with the reason
        self.producers: dict[str, nn.Module] = {}   # filter mode: every producing layer of the groups
        self.dropped: dict[str, torch.Tensor] = {}
        self.keep: dict[str, int] = {}              # filter mode with latency_target: channels kept per group
        self.latency_found: dict = {}

    def attach(self, model: nn.Module, layers: list[str], plan) -> None:
        super().attach(model, layers, plan)
        o = self.options
        self.units = list(self.layers)
        if o.granularity == "filter":
            self.groups, self.whole = selected_groups(model, layers, plan.input_shape,
                                                      "prune.greg (filter granularity)")
            self.units = list(self.groups)
            self.producers = {p: get_module(model, p) for g in self.groups.values() for p in g.producers}
            if o.latency_target > 0 and plan.latency_ratio is not None:  # else: replayed from a checkpoint
                try:
                    found = widths_for_latency(model, list(self.groups.values()), o.latency_target,
                                               plan.latency_ratio)
                except ValueError as e:
                    raise UserError(f"prune.greg.latency_target: {e}") from None
                self.keep = found["keep"]
                self.latency_found = {"latency_ratio_measured": found["latency_ratio"], "ratio": found["ratio"],
                                      "round_to_found": found["round_to"], "pow2_found": found["pow2"],
                                      "latency_refined": found["refined"],
                                      "latency_probes": found["probes"]}
        steps = max(int((o.reg_by - o.pick_after) * plan.total_steps), o.update_reg_interval)
        updates = max(steps // o.update_reg_interval, 2)
        if o.variant == 1:
            self.gran_prune = o.reg_granularity_prune or o.reg_upper_limit / updates
        else:
            self.gran_pick = o.reg_granularity_pick or o.reg_upper_limit_pick / (updates // 2)
            self.gran_prune = o.reg_granularity_prune or o.reg_upper_limit / (updates // 2)

    def _weight(self, name: str) -> torch.Tensor:
        return self.modules[name].weight

    def _groups(self, unit: str) -> torch.Tensor:
        """Score per group of a unit: |w| per weight, or the channel importance of a channel group."""
        if self.groups:
            return channel_importance(self.model, self.groups[unit])
        return self._weight(unit).detach().abs()

    def _pick(self) -> dict[str, torch.Tensor]:
        if self.options.latency_target > 0 and not self.latency_found:
            raise UserError("prune.greg.latency_target: the widths are timed in onnxruntime when training starts; "
                            "run it through the pipeline (`sparsepipe run`), which provides the timing")
        return {n: self._pick_unit(n, self._groups(n)) for n in self.units}

    def _pick_unit(self, unit: str, scores: torch.Tensor) -> torch.Tensor:
        """The unit's pruned groups (bool per group) by `scores`: its latency-target width, else the L1 rule."""
        group = self.groups.get(unit) if self.groups else None
        if group is None:
            return lowest_mask(scores, self._count(unit, scores.numel()))
        mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
        mask[drop_lowest(group, scores, self._count(unit, scores.numel())).to(scores.device)] = True
        return mask.view_as(scores)

    def _count(self, unit: str, n: int) -> int:
        """How many of the unit's n groups are pruned: its latency-target width, else GReg's count."""
        if self.keep:  # widths found for a latency target
            return self.groups[unit].size - self.keep[unit]
        return pruned_count(n, self.options.sparsity, self.groups[unit].blocks if self.groups else 1)

    def begin_epoch(self, epoch: int) -> None:
        if self.phase == "dense" and epoch >= math.floor(self.options.pick_after * self.plan.epochs):
            self.reg = {n: torch.zeros_like(self._groups(n)) for n in self.units}
            self.done = {n: False for n in self.units}
            self.reg_start = epoch * self.plan.steps_per_epoch
            if self.options.variant == 1:
                self.pruned = self._pick()
                self.phase = "prune"
            else:
                self.l1_pick = self._pick()  # what GReg-1 would remove, for the overlap log
                self.phase = "pick"

    def after_backward(self, step: int) -> None:
        # As the official code: the penalty is updated at steps 0, k, 2k, ... of the penalty phase,
        # before that step's penalty is applied (not one interval later, after the step).
        if self.phase in ("pick", "prune") and (step - self.reg_start) % self.options.update_reg_interval == 0:
            self._update_reg()
        if self.phase not in ("pick", "prune", "stabilize"):
            return
        for n in self.units:
            for w, channel, module in self._penalised(n):
                if w.grad is not None:
                    reg = self.reg[n].to(w.device)
                    grad, w = w.grad, w.detach()
                    if channel is not None:  # rows of other groups (a split group's other parts) get 0
                        grad, w = rows_first(grad, module), rows_first(w, module)
                        reg = per_row(torch.cat([reg, reg.new_zeros(1)])[channel.to(w.device)], w)
                    grad.add_(reg * w)

    def _penalised(self, unit: str) -> list[tuple[torch.Tensor, torch.Tensor | None, nn.Module | None]]:
        """The weights a unit's penalty applies to, with (filter mode) the channel of each output row and
        the layer (whose weight may hold its output channels in dimension 1)."""
        if self.groups:
            g = self.groups[unit]
            out = []
            for p in g.producers:
                m = self.producers[p]
                out += [(t, channel, m) for t, channel in unit_rows(m, biases=False, cells=g.cells)] if isinstance(m, RECURRENT) \
                    else [(m.weight, g.channel_of_rows(p, rows_first(m.weight, m).shape[0]), m)]
            return out
        return [(self._weight(unit), None, None)]

    def _update_mag_ratio(self, n: str, scores: torch.Tensor, pruned: torch.Tensor) -> None:
        """EMA (0.9) of mean score of the kept groups / mean score of the `pruned` ones, in the scores'
        float32 as the official code (its stop decisions compare these values)."""
        ratio = scores[~pruned].mean() / scores[pruned].mean().clamp_min(1e-12)
        if n in self.mag_ratio:
            ratio = torch.tensor(self.mag_ratio[n], dtype=ratio.dtype) * 0.9 + ratio * 0.1
        self.mag_ratio[n] = float(ratio)

    def after_step(self, step: int, lr: float) -> None:
        o = self.options
        if self.phase == "finetune":
            self.apply_masks()
            zero_dropped(self.model, self.groups, self.dropped)
        elif self.phase == "stabilize":
            # the penalty applied at the update that ended the last layer and stabilize_steps steps after it
            self.stable_steps += 1
            if self.stable_steps > o.stabilize_steps:
                self._remove()

    def _update_reg(self) -> None:
        """One penalty update, unit by unit in order (a unit's stop rule sees the units updated before it)."""
        for n in self.units:
            if not self.done[n]:
                self.done[n] = self._update_greg1(n) if self.options.variant == 1 else self._update_greg2(n)
        if self.phase == "pick" and len(self.pruned) == len(self.units):
            same = sum(int((self.l1_pick[n] & self.pruned[n]).sum()) for n in self.units)
            self.l1_overlap = same / max(sum(int(p.sum()) for p in self.pruned.values()), 1)
            self.phase = "prune"
        if all(self.done.values()):
            self.phase, self.stable_steps = "stabilize", 0

    def _update_greg1(self, n: str) -> bool:
        """Grow the pruned groups' penalty; True when the unit is done: its penalty passed reg_upper_limit,
        or (filter mode) every unit's magnitude ratio has reached mag_ratio_limit."""
        o, reg, pruned = self.options, self.reg[n], self.pruned[n]
        if not bool(pruned.any()):  # a layer its width target leaves whole: nothing to push down
            return True
        self._update_mag_ratio(n, self._groups(n), pruned)
        reg[pruned] += self.gran_prune
        every = o.granularity == "filter" and all(r >= o.mag_ratio_limit for r in self.mag_ratio.values())
        return every or bool(reg.max() > o.reg_upper_limit)  # compared in float32, as the official code

    def _update_greg2(self, n: str) -> bool:
        """Before the unit's pick: grow the penalty on all its groups, pick by current magnitude once it
        reaches reg_upper_limit_pick. After: grow the pruned groups' penalty, the kept ones get
        reg_granularity_recover. True when picked and the penalty passed reg_upper_limit or (filter
        mode) the unit's own magnitude ratio reached mag_ratio_limit."""
        o, reg, scores = self.options, self.reg[n], self._groups(n)
        filters = o.granularity == "filter"
        if n in self.pruned:
            pruned = self.pruned[n]
            reg[pruned] += self.gran_prune
            reg[~pruned] = o.reg_granularity_recover  # ≤ 0, as in the paper and the official code
            self._update_mag_ratio(n, scores, pruned)
        else:
            if self._count(n, scores.numel()) == 0:  # a layer its width target leaves whole: nothing to push down
                self.pruned[n] = torch.zeros_like(scores, dtype=torch.bool)
                return True
            reg += self.gran_pick
            current = self._pick_unit(n, scores) if filters else None
            if filters:  # the average also runs while picking, against what a pick would take now
                self._update_mag_ratio(n, scores, current)
            if bool(reg.max() < o.reg_upper_limit_pick):
                return False
            self.pruned[n] = current if current is not None else self._pick_unit(n, scores)
            if not bool(self.pruned[n].any()):
                return True
        return (filters and self.mag_ratio[n] >= o.mag_ratio_limit) or bool(reg.max() > o.reg_upper_limit)

    def _remove(self) -> None:
        """Remove the pruned groups: from now on they are exact zeros (masks kept through fine-tuning)."""
        if self.options.reset_optimizer and self.optimizer is not None and self.phase != "finetune":
            self.optimizer.state.clear()  # a fresh optimizer's state: no momentum, no step counts
        if self.groups:
            self.dropped = {n: torch.nonzero(self.pruned[n]).flatten() for n in self.units}
        else:
            self.masks = {n: (~self.pruned[n]).contiguous() for n in self.layers}
        self.phase = "finetune"
        self.apply_masks()
        zero_dropped(self.model, self.groups, self.dropped)

    def end_epoch(self, epoch: int) -> None:
        if epoch + 1 == self.plan.epochs and self.phase != "finetune" and len(self.pruned) == len(self.units):
            self._remove()  # budget ran out before the penalty finished: still deliver the pruned model

    def log_state(self) -> dict:
        state = {"phase": self.phase}
        if self.reg:
            state["reg_max"] = max(float(r.max()) for r in self.reg.values())
        if self.mag_ratio:
            state["mag_ratio_mean"] = sum(self.mag_ratio.values()) / len(self.mag_ratio)
        if self.l1_overlap is not None:
            state["l1_overlap"] = self.l1_overlap
        return state

    def state_dict(self) -> dict:
        return {**super().state_dict(), "phase": self.phase, "reg": dict(self.reg), "pruned": dict(self.pruned),
                "l1_pick": dict(self.l1_pick),
                "done": {k: int(v) for k, v in self.done.items()}, "mag_ratio": dict(self.mag_ratio),
                "l1_overlap": -1.0 if self.l1_overlap is None else self.l1_overlap,
                "stable_steps": self.stable_steps, "reg_start": self.reg_start, "keep": dict(self.keep), "latency_found": dict(self.latency_found)}

    def load_state_dict(self, state: dict) -> None:
        self.phase = state["phase"]
        self.reg, self.pruned, self.l1_pick = dict(state["reg"]), dict(state["pruned"]), dict(state["l1_pick"])
        self.done = {k: bool(v) for k, v in state["done"].items()}
        self.mag_ratio = dict(state["mag_ratio"])
        self.l1_overlap = None if state["l1_overlap"] < 0 else state["l1_overlap"]
        self.stable_steps = int(state["stable_steps"])
        self.reg_start = int(state.get("reg_start", 0))
        self.keep = {k: int(v) for k, v in state.get("keep", {}).items()}
        self.latency_found = dict(state.get("latency_found", {}))
        super().load_state_dict(state)
        if self.groups and self.phase == "finetune":
            self._remove()

    def freeze(self) -> nn.Module:
        zero_dropped(self.model, self.groups, self.dropped)
        return super().freeze()

    def summary(self) -> dict:
        o = self.options
        return {"variant": f"GReg-{o.variant}", "granularity": o.granularity, "phase_at_end": self.phase,
                "reg_granularity_prune": self.gran_prune, "l1_overlap": self.l1_overlap,
                "mag_ratio": dict(self.mag_ratio), "kept_whole": self.whole,
                "pruned_groups": {n: int(p.sum()) for n, p in self.pruned.items()},
                **({"latency_target": o.latency_target, **self.latency_found} if o.latency_target > 0 else {})}
