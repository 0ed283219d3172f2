"""The pruner protocol every method implements.

A method is one module: its `Options` dataclass, its class, and `@register_pruner("name")`
(registry.py), which makes it `prune.method = "name"` with options `[prune.name]`.

Lifecycle (called by the training loop):
    attach(model, layers, plan)      before the optimizer is built (a pruner may add parameters)
    begin_epoch(epoch)
    after_backward(step)             gradients exist, optimizer has not stepped (penalties go here)
    after_step(step, lr)             with the learning rate the optimizer just used
    end_epoch(epoch)
    freeze() -> nn.Module            a plain model whose weights hold exact zeros
State for logs: log_state(); for checkpoints: state_dict() / load_state_dict().
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..schema import sparsity_goal
from ..selection import get_module


@dataclass
class TrainPlan:
    """What a pruner may know about the training ahead of it."""
    epochs: int
    steps_per_epoch: int
    lr_at: Callable[[int], float]
    input_shape: tuple[int, ...] | None = None  # one sample's shape, for pruners that trace the model
    # latency_ratio(model, cut) -> cut's / model's measured latency, for latency targets; given by the
    # caller that knows the runtime (None: not available, e.g. when a stage only replays a checkpoint)
    latency_ratio: Callable[[nn.Module, nn.Module], float] | None = None

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def lr_sum(self, start: int, stop: int) -> float:
        return sum(self.lr_at(s) for s in range(start, stop))


def exact_zeros(w: torch.Tensor) -> torch.Tensor:
    """Replace -0.0 by +0.0 so that zeros are zeros bit for bit (CSR round trips rely on it)."""
    return torch.where(w == 0, torch.zeros_like(w), w)


class Pruner:
    """Base class: no pruning. Subclasses override the hooks they need."""

    name = "dense"
    Options: type | None = None  # the dataclass of this method's options (None: it takes none)

    def __init__(self, options: object = None):
        self.options = options
        self.model: nn.Module | None = None
        self.layers: list[str] = []
        self.plan: TrainPlan | None = None
        self.modules: dict[str, nn.Module] = {}
        self.optimizer = None

    @classmethod
    def class_for(cls, options: object) -> type[Pruner]:
        """The class that runs these options (the registered class itself unless a method has variants)."""
        return cls

    def attach(self, model: nn.Module, layers: list[str], plan: TrainPlan) -> None:
        self.model, self.layers, self.plan = model, list(layers), plan
        # resolved once: hooks run every optimizer step, and a by-name lookup scans the whole model
        self.modules = {n: get_module(model, n) for n in self.layers}

    def begin_epoch(self, epoch: int) -> None:
        pass

    def after_backward(self, step: int) -> None:
        pass

    def after_step(self, step: int, lr: float) -> None:
        pass

    def end_epoch(self, epoch: int) -> None:
        pass

    def log_state(self) -> dict:
        """Small scalars for metrics.jsonl (thresholds, penalties, ...)."""
        return {}

    def param_groups(self) -> list[dict]:
        """Parameters the pruner added (e.g. STR's thresholds), as optimizer groups with their own
        `weight_decay` (None: the training config's). Called after attach, before the optimizer exists."""
        return []

    def bind_optimizer(self, optimizer) -> None:
        """The optimizer built over the model (and `param_groups`), for pruners that tune it."""
        self.optimizer = optimizer

    def summary(self) -> dict:
        """How sparsity was controlled in this run, for the report."""
        return {}

    def requested_sparsity(self) -> float:
        """The weight sparsity the user asked for (0: none), so that reaching it is not warned about."""
        return sparsity_goal(self.options)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def freeze(self) -> nn.Module:
        """Return the model as plain modules with exact zeros in pruned weights."""
        with torch.no_grad():
            for name in self.layers:
                m = self.modules[name]
                m.weight.copy_(exact_zeros(m.weight))
        return self.model


class MaskPruner(Pruner):
    """A pruner that keeps boolean masks and re-applies them after every optimizer step."""

    def __init__(self, options: object = None):
        super().__init__(options)
        self.masks: dict[str, torch.Tensor] = {}
        self._multipliers: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # mask -> it in the weight's dtype

    def apply_masks(self) -> None:
        """weight *= mask for every layer; the mask is cast to the weight's dtype once per mask change."""
        with torch.no_grad():
            for name, mask in self.masks.items():
                weight = self.modules[name].weight
                cached = self._multipliers.get(name)
                if cached is None or cached[0] is not mask:
                    cached = (mask, mask.to(device=weight.device, dtype=weight.dtype))
                    self._multipliers[name] = cached
                weight.mul_(cached[1])

    def after_step(self, step: int, lr: float) -> None:
        self.apply_masks()

    def state_dict(self) -> dict:
        return {"masks": {k: v.clone() for k, v in self.masks.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.masks = {k: v.to(self.modules[k].weight.device) for k, v in state["masks"].items()}
        self.apply_masks()

    def freeze(self) -> nn.Module:
        self.apply_masks()
        return super().freeze()
