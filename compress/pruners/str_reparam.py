"""STR: soft threshold reparameterisation with a learnable threshold per layer (Kusupati et al. 2020).

w = sign(θ)·ReLU(|θ| − sigmoid(s_l)), one scalar s_l per layer trained by SGD with the rest.
Unlike LATS the gradient is the true one: zero for weights below the threshold (only weight
decay still shrinks them). Sparsity emerges from (s_init, weight decay on s, Σ η). Target mode
replaces the decay on s: every 1% of training all s_l are shifted by one amount so that sparsity
follows a cubic ramp to the target.
"""
from __future__ import annotations

from dataclasses import dataclass
import math

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..selection import get_module
from ..schedules import cubic_sparsity
from ..schema import opt
from .base import Pruner
from .registry import register_pruner
from .target import shifted_sparsity, solve_shift


@dataclass
class STROptions:
    s_init: float = opt(-5.0, "Initial s of every layer (threshold sigmoid(s)). The paper uses -3200 on "
                        "ImageNet; short or small runs need about -5..-10.", lo=-1e4, hi=1e4)
    s_weight_decay: float = opt(-1.0, "Weight decay on s (negative: the same as train.weight_decay).")
    target_sparsity: float = opt(0.0, "Target global sparsity (0 = off): instead of a fixed decay on s, every "
                                 "1% of training all s are shifted by the one amount that puts sparsity on a "
                                 "cubic ramp to the target; layers keep their learned differences.",
                                 lo=0.0, hi=1.0, hi_open=True, sparsity_goal=True)
    ramp_fraction: float = opt(0.75, "Target mode: fraction of the epochs over which sparsity ramps "
                               "(cubic) to the target.", lo=0.0, hi=1.0, lo_open=True)
    decay_1d: bool = opt(True, "Weight decay also on biases and BatchNorm parameters, as the official STR code "
                         "(no_bn_decay off by default there). false: weights only.")


def sigmoid(s: float) -> float:
    """1 / (1 + e^−s) in double precision for any s (the same bits as torch.sigmoid in float64). Below
    s = −700, e^−s would overflow; there 1 + e^−s rounds to e^−s, so the value is e^s: the paper's
    s_init = −3200 gives 0.0, not an OverflowError."""
    return 1.0 / (1.0 + math.exp(-s)) if s > -700.0 else math.exp(s)


def s_gradient(theta: torch.Tensor, grad_theta: torch.Tensor, s: float) -> torch.Tensor:
    """∂L/∂s of w = sign(θ)·ReLU(|θ| − sigmoid(s)), from θ's gradient: −sigmoid'(s)·Σ ∂L/∂w·sign(w).
    ∂L/∂θ is ∂L/∂w where a weight is kept and 0 elsewhere, and sign(w) = sign(θ) where kept, so
    the sum is ∂L/∂θ·sign(θ): one dot, no autograd node. sigmoid'(s) = sigmoid(s)·sigmoid(−s), which
    stays finite (0 far out) on both sides, where 1 − sigmoid(s) would cancel for large s."""
    slope = sigmoid(s) * sigmoid(-s)
    return torch.dot(grad_theta.reshape(-1), theta.detach().sign().reshape(-1)) * (-slope)


class SoftThresholdLearned(nn.Module):
    """θ ↦ sign(θ)·ReLU(|θ| − sigmoid(s)), which is softshrink(θ, sigmoid(s)) (the same floats; its
    backward is the true gradient, zero below the threshold). s is outside autograd: STRPruner sets
    its gradient from θ's after the backward pass (`s_gradient`). A Python autograd function carrying
    both cost 11% of a LeNet-5 training step on 1 thread; this way the step pays one fused op each way
    and a dot per layer."""

    def __init__(self, s_init: float):
        super().__init__()
        self.s = nn.Parameter(torch.tensor(float(s_init)), requires_grad=False)

    def tau(self) -> float:
        """The threshold sigmoid(s), stable for any s."""
        return sigmoid(float(self.s))

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.softshrink(theta, self.tau())


@register_pruner("str")
class STRPruner(Pruner):
    name = "str"
    Options = STROptions

    def __init__(self, options: STROptions):
        super().__init__(options)
        self.options: STROptions = options
        self.s_decay: float | None = None if options.s_weight_decay < 0 else options.s_weight_decay
        self._frozen_thresholds: dict[str, float] | None = None
        self.initial_sparsity = 0.0   # target mode: the ramp starts where s_init puts it
        self.shift = 0.0              # target mode: the last shift applied to every s

    def attach(self, model: nn.Module, layers: list[str], plan) -> None:
        super().attach(model, layers, plan)
        for name in layers:
            parametrize.register_parametrization(get_module(model, name), "weight",
                                                 SoftThresholdLearned(self.options.s_init))
        if self.options.target_sparsity > 0:
            self.s_decay = 0.0  # the controller takes the decay's place
            self.initial_sparsity = shifted_sparsity(self._latents(), self._s_values(), 0.0)

    def _latents(self) -> list[torch.Tensor]:
        return [self.modules[n].parametrizations.weight.original for n in self.layers]

    def after_backward(self, step: int) -> None:
        for theta, reparam in zip(self._latents(), self._reparams()):
            if theta.grad is not None:
                grad = s_gradient(theta, theta.grad, float(reparam.s))
                reparam.s.grad = grad.to(reparam.s.dtype).reshape(reparam.s.shape)

    def _reparams(self) -> list[SoftThresholdLearned]:
        return [self.modules[n].parametrizations.weight[0] for n in self.layers]

    def _s_values(self) -> list[float]:
        return [float(s.detach()) for s in self._params()]

    def _params(self) -> list[nn.Parameter]:
        return [r.s for r in self._reparams()]

    def param_groups(self) -> list[dict]:
        return [{"params": self._params(), "weight_decay": self.s_decay, "name": "str_s"}]

    def _s_group(self) -> dict:
        return next(g for g in self.optimizer.param_groups if g.get("name") == "str_s")

    def after_step(self, step: int, lr: float) -> None:
        o, total = self.options, self.plan.total_steps
        if o.target_sparsity <= 0 or ((step + 1) % max(total // 100, 1) and step + 1 < total):
            return
        ramp_end = max(int(math.ceil(o.ramp_fraction * total)), 1)
        wanted = cubic_sparsity(step + 1, 0, ramp_end, o.target_sparsity, self.initial_sparsity)
        self.shift = solve_shift(self._latents(), self._s_values(), wanted)
        with torch.no_grad():
            for s in self._params():
                s.add_(self.shift)

    def log_state(self) -> dict:
        thresholds = list(self.thresholds().values())
        return {"threshold_mean": sum(thresholds) / len(thresholds),
                **({"s_shift": self.shift} if self.options.target_sparsity > 0 else {}),
                **({"s_weight_decay": self.s_decay} if self.s_decay is not None else {})}

    def state_dict(self) -> dict:
        return {"s_decay": -1.0 if self.s_decay is None else self.s_decay,
                "initial_sparsity": self.initial_sparsity, "shift": self.shift}

    def load_state_dict(self, state: dict) -> None:
        self.s_decay = None if state["s_decay"] < 0 else float(state["s_decay"])
        self.initial_sparsity = float(state.get("initial_sparsity", 0.0))
        self.shift = float(state.get("shift", 0.0))
        if self.s_decay is not None and self.optimizer is not None:
            self._s_group()["weight_decay"] = self.s_decay

    def thresholds(self) -> dict[str, float]:
        if self._frozen_thresholds is not None:
            return self._frozen_thresholds
        return {n: float(torch.sigmoid(s.detach())) for n, s in zip(self.layers, self._params())}

    def summary(self) -> dict:
        o = self.options
        return {"s_init": o.s_init, "s_weight_decay_final": self.s_decay, "thresholds": self.thresholds(),
                "sparsity_control": f"target {o.target_sparsity}" if o.target_sparsity > 0 else "s_init + decay"}

    def freeze(self) -> nn.Module:
        self._frozen_thresholds = self.thresholds()
        for name in self.layers:
            parametrize.remove_parametrizations(get_module(self.model, name), "weight", leave_parametrized=True)
        return super().freeze()
