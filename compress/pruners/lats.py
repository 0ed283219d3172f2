"""LATS: soft-threshold reparameterisation with a learning-rate-tied threshold (ISTA view).

Effective weight w = S_d(θ) = sign(θ)·max(|θ| − d, 0); the backward pass is straight-through
(∂L/∂θ = ∂L/∂w wherever θ ≠ 0; 0 where θ is exactly 0, as the official code), so pruned weights
keep their gradient and can regrow. One global
threshold d, kept in state_dict, follows a schedule over the pruning window:

- lats: d_t = λ·Σ_{s<t} η_s over the learning rates actually used (λ = D / Σ_window η_s when
  D is given), right for any LR schedule;
- s-lats, pgh, linear, constant: the closed forms of `schedules.threshold_fraction`.

Where this deliberately differs from the official code: schedule 'lats' sums the learning rates
actually used, so it stays λ = Δd/η under warm-up and step schedules; the official closed forms
assume cosine without warm-up (under cosine from epoch 0 both give the same threshold).

Modes: during (window = [start_epoch, epochs)), early (window = [start_epoch, end_epoch), then
the mask is fixed: S_d(θ) is written into θ, d drops to 0 and the kept weights train on), init (pruning at initialisation: constant D from step 0
with the latent init inflated, θ0 = sign(w0)(|w0| + D), so S_D(θ0) = w0).
Target mode (target_sparsity > 0) keeps the mechanism and its constant rate: the threshold grows as
d ← d + K·Δp (p: the schedule's progress, Ση/Σ_window η for 'lats', so λ = K/Σ_window η); K is
calibrated during the first half of the window toward the predicted end-of-window |θ| quantile at
the target and then held within ±4.5% (`target.RateCalibration`). Modes 'init' and schedule
'constant' have no rate: there D is re-set between epochs to the |θ| quantile at the target.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import UserError
from ..schema import opt
from ..schedules import threshold_fraction
from ..selection import get_module
from ..sparsity import magnitude_quantile
from .base import Pruner
from .registry import register_pruner
from .target import RateCalibration


@dataclass
class LATSOptions:
    schedule: Literal["lats", "s-lats", "pgh", "linear", "constant"] = opt(
        "lats", "Threshold schedule over the pruning window (see docs/methods.md).")
    mode: Literal["during", "early", "init"] = opt(
        "during", "during: sparsify while training; early: reach D by end_epoch, then fix the mask and keep "
        "training; init: pruning at initialisation (constant D from step 0, inflated latent init).")
    threshold_final: float = opt(0.05, "D: the threshold at the end of the pruning window.", lo=0.0, lo_open=True,
                                 hi=1000.0)
    l1_lambda: float = opt(0.0, "λ (schedule 'lats' only): d_t = λ·Σ_{s<t} η_s with no final value; "
                           "when > 0 it replaces threshold_final.", lo=0.0)
    start_epoch: int = opt(0, "Epoch at which the threshold starts growing (dense before it).", lo=0)
    end_epoch: int = opt(0, "mode 'early': epoch by which the threshold reaches D (0 = half of the epochs).", lo=0)
    pgh_beta: float = opt(10.0, "schedule 'pgh': λ grows geometrically by this factor over the window.",
                          lo=0.0, lo_open=True)
    target_sparsity: float = opt(0.0, "Target global sparsity (0 = off). The threshold's rate λ = Δd/η is "
                                 "calibrated in the first half of the pruning window and then held (±4.5%); "
                                 "the report records the λ and D that resulted.",
                                 lo=0.0, hi=1.0, hi_open=True, sparsity_goal=True)
    decay_1d: bool = opt(True, "Weight decay also on biases and BatchNorm parameters (train.weight_decay), as "
                         "the official LATS code (no_bn_decay off: one decay for every parameter). false: "
                         "weights only, the other methods' default.")

    def check(self, where: str) -> None:
        if self.l1_lambda > 0 and self.schedule != "lats":
            raise UserError(f"{where}.l1_lambda: only schedule 'lats' takes λ; others need threshold_final")
        if self.l1_lambda > 0 and self.target_sparsity > 0:
            raise UserError(f"{where}.target_sparsity: calibrates D, so it cannot be combined with l1_lambda")
        if self.mode == "init" and self.schedule not in ("lats", "constant"):
            raise UserError(f"{where}.schedule: mode 'init' uses a constant threshold; leave schedule at 'lats'")


def soft_threshold(theta: torch.Tensor, d: torch.Tensor | float) -> torch.Tensor:
    """S_d(θ) = sign(θ)·max(|θ| − d, 0), computed as θ − clamp(θ, −d, d): two operations instead of
    five, the same bits (θ ∓ d rounds as ±(|θ| − d) does), and +0.0 where pruned (x − x is +0.0)."""
    if not isinstance(d, torch.Tensor):
        d = torch.tensor(d, dtype=theta.dtype, device=theta.device)
    return theta - torch.clamp(theta, -d, d)


class _SoftThresholdSTE(torch.autograd.Function):
    """Forward S_d(θ); backward ∂L/∂w wherever θ ≠ 0 and 0 where θ is exactly 0, the official rule
    (its w = sign(θ)·pass-through-ReLU(|θ| − d) back-propagates ∂L/∂w·sign(θ)², and sign(0) = 0)."""

    @staticmethod
    def forward(ctx, theta: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(theta)
        return soft_threshold(theta, d)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (theta,) = ctx.saved_tensors
        return grad.masked_fill(theta == 0, 0.0), None


class SoftThreshold(nn.Module):
    """Parametrization θ ↦ S_d(θ) with a straight-through gradient; d is a buffer (checkpointed)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("threshold", torch.zeros(()))

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        return _SoftThresholdSTE.apply(theta, self.threshold)


@register_pruner("lats")
class LATSPruner(Pruner):
    name = "lats"
    Options = LATSOptions

    def __init__(self, options: LATSOptions):
        super().__init__(options)
        self.options: LATSOptions = options
        self.threshold = 0.0
        self.final = options.threshold_final     # D; moves only in target mode
        self.lr_accumulated = 0.0
        self.fixed_masks: dict[str, torch.Tensor] = {}
        self._lr_window = 0.0
        rated = options.target_sparsity > 0 and options.mode != "init" and options.schedule != "constant"
        self.calibration = RateCalibration(options.target_sparsity) if rated else None

    # -- the pruning window in steps --
    @property
    def window(self) -> tuple[int, int]:
        o, p = self.options, self.plan
        if o.mode == "init":
            return 0, p.total_steps
        end_epoch = (o.end_epoch or max(p.epochs // 2, 1)) if o.mode == "early" else p.epochs
        if not o.start_epoch < end_epoch <= p.epochs:
            raise UserError(f"prune.lats: need start_epoch < end_epoch <= train.epochs, got "
                            f"{o.start_epoch}, {end_epoch}, {p.epochs}")
        return o.start_epoch * p.steps_per_epoch, end_epoch * p.steps_per_epoch

    def attach(self, model: nn.Module, layers: list[str], plan) -> None:
        super().attach(model, layers, plan)
        start, end = self.window
        self._lr_window = plan.lr_sum(start, end)
        for name in layers:
            module = get_module(model, name)
            if self.options.mode == "init":
                with torch.no_grad():
                    w = module.weight
                    w.copy_(torch.sign(w) * (w.abs() + self.final))
            parametrize.register_parametrization(module, "weight", SoftThreshold())
        if self.options.mode == "init":
            self._set_threshold(self.final)
        if self.calibration is not None:
            self.calibration.update(0.0, 0.0, 0.0, self._quantile())

    def _quantile(self) -> float:
        return max(magnitude_quantile(self.latents(), self.options.target_sparsity), 1e-12)

    def _progress(self, step: int) -> float:
        """p: the schedule's progress over the window after `step` steps (Ση so far / Σ_window η for 'lats')."""
        o = self.options
        if o.schedule == "lats":
            return min(self.lr_accumulated / max(self._lr_window, 1e-30), 1.0)
        start, end = self.window
        return threshold_fraction(o.schedule, (min(step, end) - start) / max(end - start, 1), o.pgh_beta)

    def _calibrated_step(self, step: int, lr: float) -> None:
        """Target mode: d ← d + K·Δp, K re-calibrated every 1/50 of the window (held in its second half)."""
        start, end = self.window
        if not start <= step < end:
            return
        before = self._progress(step)
        self.lr_accumulated += lr
        after = self._progress(step + 1)
        d = self.threshold + self.calibration.rate * (after - before)
        done = step + 1 - start
        if done % max((end - start) // 50, 1) == 0 and step + 1 < end:
            self._set_threshold(d)
            self.calibration.update(done / (end - start), after, d, self._quantile())
        self._set_threshold(d)
        self.final = d + self.calibration.rate * (1.0 - after)

    def _modules(self) -> list[nn.Module]:
        return [self.modules[n] for n in self.layers]

    def latents(self) -> list[torch.Tensor]:
        return [m.parametrizations.weight.original for m in self._modules()]

    def _set_threshold(self, d: float) -> None:
        self.threshold = d
        for m in self._modules():
            m.parametrizations.weight[0].threshold.fill_(d)

    def _threshold_at(self, step: int) -> float:
        """d after `step` optimizer steps have been taken (step = index of the last one, +1)."""
        o = self.options
        start, end = self.window
        if o.mode == "init" or o.schedule == "constant":  # only asked past the window's start
            return self.final
        if o.schedule == "lats":
            if o.l1_lambda > 0:
                return o.l1_lambda * self.lr_accumulated
            return self.final * min(self.lr_accumulated / max(self._lr_window, 1e-30), 1.0)
        x = (min(step, end) - start) / max(end - start, 1)
        return self.final * threshold_fraction(o.schedule, x, o.pgh_beta)

    def after_backward(self, step: int) -> None:
        for name, mask in self.fixed_masks.items():  # early pruning: the mask no longer moves
            theta = self.modules[name].parametrizations.weight.original
            if theta.grad is not None:
                theta.grad.mul_(mask)

    def after_step(self, step: int, lr: float) -> None:
        if self.calibration is not None and not self.fixed_masks:
            self._calibrated_step(step, lr)
            return
        start, end = self.window
        if start <= step < end:
            self.lr_accumulated += lr
        if step >= start and not self.fixed_masks:
            self._set_threshold(self._threshold_at(step + 1))
        if self.fixed_masks:
            with torch.no_grad():
                for name, mask in self.fixed_masks.items():
                    self.modules[name].parametrizations.weight.original.mul_(mask)

    def end_epoch(self, epoch: int) -> None:
        o, p = self.options, self.plan
        start, end = self.window
        step = (epoch + 1) * p.steps_per_epoch
        if o.target_sparsity > 0 and self.calibration is None and step < end:
            self.final = max(magnitude_quantile(self.latents(), o.target_sparsity), 1e-12)
            if o.mode == "init":
                self._set_threshold(self.final)
        if o.mode == "early" and step >= end and not self.fixed_masks:
            self._fix_mask()

    def _fix_mask(self) -> None:
        """Early pruning: bake S_d(θ) into the latent and train the kept weights as a masked dense layer."""
        with torch.no_grad():
            for name, theta in zip(self.layers, self.latents()):
                self.fixed_masks[name] = (theta.abs() > self.threshold).to(theta.dtype)
                theta.copy_(soft_threshold(theta, self.threshold))
        self._set_threshold(0.0)

    def lam(self) -> float | None:
        """Target mode, schedule 'lats': the λ = Δd/η in force now."""
        if self.calibration is None or self.options.schedule != "lats":
            return None
        return self.calibration.rate / max(self._lr_window, 1e-30)

    def log_state(self) -> dict:
        lam = self.lam()
        return {"threshold": self.threshold, "threshold_final": self.final, **({"lambda": lam} if lam else {})}

    def state_dict(self) -> dict:
        return {"threshold": self.threshold, "final": self.final, "lr_accumulated": self.lr_accumulated,
                "fixed_masks": {k: v.clone() for k, v in self.fixed_masks.items()},
                **({"calibration": self.calibration.state_dict()} if self.calibration else {})}

    def load_state_dict(self, state: dict) -> None:
        self.lr_accumulated = float(state["lr_accumulated"])
        self.final = float(state.get("final", self.options.threshold_final))
        self.fixed_masks = dict(state.get("fixed_masks", {}))
        if self.calibration is not None and "calibration" in state:
            self.calibration.load_state_dict(state["calibration"])
        self._set_threshold(float(state["threshold"]))

    def summary(self) -> dict:
        o = self.options
        lam = self.lam()
        return {"schedule": o.schedule, "mode": o.mode, "threshold_final": self.final,
                **({"lambda": lam} if lam else {}),
                "sparsity_control": f"target {o.target_sparsity}" if o.target_sparsity > 0 else
                ("l1_lambda" if o.l1_lambda > 0 else "threshold_final")}

    def freeze(self) -> nn.Module:
        """Write S_d(θ) into plain weights (not θ·mask, which would change the function)."""
        for module in self._modules():
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        return super().freeze()
