"""One-shot filter (channel) pruning over coupled channel groups, removed physically at freeze.

Channels are scored by the L1 norm of their producers' filters (summed over the producers a
residual add couples); the lowest min(ceil(ratio·n), n−1) of every prunable group are zeroed
in every coupled module (filters, biases, BatchNorm γ and β, depthwise filters) and kept at
zero through fine-tuning, so the freeze stage can cut them out exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UserError
from ..schema import opt
from ..structured import channel_groups, zero_channels
from .base import Pruner
from .groups import pick_pruned


@dataclass
class FilterOptions:
    ratio: float = opt(0.5, "Fraction of the channels removed in every prunable group (at most n−1).",
                       lo=0.0, hi=1.0, hi_open=True)
    prune_after: float = opt(0.3, "Fraction of the epochs trained dense before the one-shot cut.",
                             lo=0.0, hi=1.0, hi_open=True)
    round_to: int = opt(1, "Keep a multiple of this many channels per group (e.g. 8: SIMD-friendly widths).",
                        lo=1)


class FilterPruner(Pruner):
    name = "filter"
    options: FilterOptions

    def __init__(self, options: FilterOptions):
        super().__init__(options)
        self.dropped: dict[str, torch.Tensor] = {}  # first producer of a group -> dropped channel indices
        self.groups = []

    def attach(self, model: nn.Module, layers: list[str], plan) -> None:
        super().attach(model, layers, plan)
        if plan.input_shape is None:
            raise UserError("prune.method 'filter' needs the input shape to trace the model")
        try:
            groups = channel_groups(model, torch.zeros(2, *plan.input_shape))
        except ValueError as e:
            raise UserError(f"prune.method 'filter': {e}") from None
        self.groups = [g for g in groups if g.prunable and set(g.producers) & set(layers)]
        if not self.groups:
            raise UserError("prune.method 'filter': no prunable channel group among the selected layers")

    def _score(self, group) -> torch.Tensor:
        return sum(self.model.get_submodule(p).weight.detach().abs().flatten(1).sum(1) for p in group.producers)

    def begin_epoch(self, epoch: int) -> None:
        if epoch == math.floor(self.options.prune_after * self.plan.epochs) and not self.dropped:
            for g in self.groups:
                self.dropped[g.producers[0]] = self._pick(g)
            self._apply()

    def _pick(self, group) -> torch.Tensor:
        """Indices of the channels to drop: the lowest scores, keeping a multiple of round_to."""
        scores, r = self._score(group), self.options.round_to
        if r == 1:
            return torch.nonzero(pick_pruned(scores, self.options.ratio)).flatten()
        n = scores.numel()
        keep = min(max(r, int(round(n * (1 - self.options.ratio) / r)) * r), n)
        return torch.argsort(scores, stable=True)[: n - keep].sort().values

    def _apply(self) -> None:
        for g in self.groups:
            if g.producers[0] in self.dropped:
                zero_channels(self.model, g, self.dropped[g.producers[0]])

    def after_step(self, step: int, lr: float) -> None:
        if self.dropped:
            self._apply()

    def state_dict(self) -> dict:
        return {"dropped": dict(self.dropped)}

    def load_state_dict(self, state: dict) -> None:
        self.dropped = dict(state["dropped"])
        self._apply()

    def summary(self) -> dict:
        return {"ratio": self.options.ratio, "groups_cut": len(self.dropped),
                "channels_removed": {k: int(len(v)) for k, v in self.dropped.items()}}

    def freeze(self) -> nn.Module:
        self._apply()
        return super().freeze()
