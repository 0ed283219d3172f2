"""LATS: soft-threshold reparameterisation with a learning-rate-tied threshold (ISTA view).

Effective weight w = S_d(θ) = sign(θ)·max(|θ| − d, 0); the backward pass is straight-through
(∂L/∂θ = ∂L/∂w everywhere), so pruned weights keep their gradient and can regrow. One global
threshold d, kept in state_dict, grows as d_t = λ·Σ_{s<t} η_s over the learning rates
actually used (or, given a final threshold D, d_t = D·Σ_{s<t} η_s / Σ_all η_s).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..schema import opt
from ..selection import get_module
from .base import Pruner, exact_zeros


@dataclass
class LATSOptions:
    threshold_final: float = opt(0.05, "D: the threshold reached at the last step, "
                                 "d_t = D·Σ_{s<t} η_s / Σ_all η_s (used when l1_lambda is 0).",
                                 lo=0.0, lo_open=True)
    l1_lambda: float = opt(0.0, "λ: the L1 coefficient, d_t = λ·Σ_{s<t} η_s; when > 0 it replaces "
                           "threshold_final.", lo=0.0)
    start_epoch: int = opt(0, "Epoch from which the threshold starts growing (dense before it).", lo=0)


def soft_threshold(theta: torch.Tensor, d: torch.Tensor | float) -> torch.Tensor:
    """S_d(θ) = sign(θ)·max(|θ| − d, 0), with +0.0 (never -0.0) where pruned."""
    return exact_zeros(torch.sign(theta) * torch.clamp(theta.abs() - d, min=0))


class _SoftThresholdSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, theta: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return soft_threshold(theta, d)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class SoftThreshold(nn.Module):
    """Parametrization θ ↦ S_d(θ) with a straight-through gradient; d is a buffer (checkpointed)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("threshold", torch.zeros(()))

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        return _SoftThresholdSTE.apply(theta, self.threshold)


class LATSPruner(Pruner):
    name = "lats"
    options: LATSOptions

    def __init__(self, options: LATSOptions):
        super().__init__(options)
        self.threshold = 0.0
        self.lr_accumulated = 0.0
        self._lr_total = 0.0

    def attach(self, model: nn.Module, layers: list[str], plan) -> None:
        super().attach(model, layers, plan)
        for name in layers:
            parametrize.register_parametrization(get_module(model, name), "weight", SoftThreshold())
        start = self.options.start_epoch * plan.steps_per_epoch
        self._lr_total = plan.lr_sum(start, plan.total_steps)

    def _parametrizations(self) -> list[SoftThreshold]:
        return [get_module(self.model, n).parametrizations.weight[0] for n in self.layers]

    def _set_threshold(self, d: float) -> None:
        self.threshold = d
        for p in self._parametrizations():
            p.threshold.fill_(d)

    def after_step(self, step: int, lr: float) -> None:
        if step < self.options.start_epoch * self.plan.steps_per_epoch:
            return
        self.lr_accumulated += lr
        if self.options.l1_lambda > 0:
            d = self.options.l1_lambda * self.lr_accumulated
        else:
            d = self.options.threshold_final * self.lr_accumulated / max(self._lr_total, 1e-30)
        self._set_threshold(d)

    def log_state(self) -> dict:
        return {"threshold": self.threshold}

    def state_dict(self) -> dict:
        return {"threshold": self.threshold, "lr_accumulated": self.lr_accumulated}

    def load_state_dict(self, state: dict) -> None:
        self.lr_accumulated = float(state["lr_accumulated"])
        self._set_threshold(float(state["threshold"]))

    def freeze(self) -> nn.Module:
        """Write S_d(θ) into plain weights (not θ·mask, which would change the function)."""
        for name in self.layers:
            parametrize.remove_parametrizations(get_module(self.model, name), "weight",
                                                leave_parametrized=True)
        return super().freeze()
