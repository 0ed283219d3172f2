"""Movement pruning (Sanh, Wolf & Rush 2020): prune the weights that move toward zero while fine-tuning.

Every step the scores accumulate S ← S − W·∂L/∂W' (W the dense latent weight, W' = W ⊙ M the weight
the forward pass uses): a weight scores high when training pushes it away from zero, whatever its
magnitude, which is what fine-tuning a pretrained model needs. The mask enters as a parametrization
with a straight-through backward, so ∂L/∂W' reaches W unmasked and pruned weights keep scoring
(they can come back); after the scores are read, the gradient of the pruned latent weights is
zeroed, as W' = W ⊙ M gives. Sparsity follows the cubic schedule of Zhu & Gupta from `start` to
`end`, the mask being recomputed every `frequency` steps, then fixed while the kept weights fine-tune.

- hard: every layer keeps the top (1 − s_t) of its scores (the paper's Top_v);
- soft: one threshold τ on the scores of all layers (M = S > τ), set at each update so that the
  global sparsity is s_t: layers end up with different sparsities. The paper fixes τ and steers
  sparsity with a penalty on sigmoid(S); placing τ by the schedule reaches the target exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..ranking import lowest_mask
from ..schedules import cubic_sparsity
from ..schema import opt
from .base import Pruner
from .registry import register_pruner


@dataclass
class MovementOptions:
    target_sparsity: float = opt(0.9, "Final fraction of the selected weights set to zero.",
                                 lo=0.0, hi=1.0, hi_open=True, sparsity_goal=True)
    variant: Literal["hard", "soft"] = opt("hard", "hard: every layer keeps the top (1 − s) of its scores; soft: "
                                           "one threshold on the scores of all layers, placed so that the global "
                                           "sparsity is s (layers differ).")
    start: float = opt(0.1, "Fraction of training at which the mask starts (scores accumulate from step 0).",
                       lo=0.0, hi=1.0, hi_open=True)
    end: float = opt(0.7, "Fraction of training at which target_sparsity is reached; the mask is then fixed.",
                     lo=0.0, hi=1.0, lo_open=True)
    frequency: int = opt(10, "Steps between mask updates.", lo=1)


class _MaskStraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return weight * mask

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class MovementMask(nn.Module):
    """Parametrization W ↦ W ⊙ M whose backward hands ∂L/∂W' to W unmasked; M is a buffer."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", torch.ones_like(weight.detach()))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return _MaskStraightThrough.apply(weight, self.mask.to(weight.dtype))


def top_scores(scores: dict[str, torch.Tensor], sparsity: float, variant: str) -> tuple[dict, float | None]:
    """Keep-masks dropping round(sparsity·n) lowest scores per layer (hard) or over all layers (soft),
    and the soft variant's threshold τ (the highest score dropped; None for hard or nothing dropped)."""
    if variant == "hard":
        return {n: ~lowest_mask(s, round(sparsity * s.numel())) for n, s in scores.items()}, None
    flat = torch.cat([s.flatten() for s in scores.values()])
    dropped = lowest_mask(flat, round(sparsity * flat.numel()))
    masks, offset = {}, 0
    for n, s in scores.items():
        masks[n] = ~dropped[offset:offset + s.numel()].view_as(s)
        offset += s.numel()
    return masks, (float(flat[dropped].max()) if dropped.any() else None)


@register_pruner("movement")
class MovementPruner(Pruner):
    Options = MovementOptions

    def __init__(self, options: MovementOptions):
        super().__init__(options)
        self.options: MovementOptions = options
        self.scores: dict[str, torch.Tensor] = {}
        self.sparsity = 0.0                 # s_t of the current mask
        self.threshold: float | None = None  # soft: τ of the current mask

    def attach(self, model: nn.Module, layers: list[str], plan) -> None:
        super().attach(model, layers, plan)
        for name, module in self.modules.items():
            parametrize.register_parametrization(module, "weight", MovementMask(module.weight))
            self.scores[name] = torch.zeros_like(module.weight, dtype=torch.float32).detach()

    def _latent(self, name: str) -> torch.Tensor:
        return self.modules[name].parametrizations.weight.original

    def _mask(self, name: str) -> torch.Tensor:
        return self.modules[name].parametrizations.weight[0].mask

    def after_backward(self, step: int) -> None:
        """S ← S − W·∂L/∂W', then the pruned latent weights' gradient is zeroed (W' = W ⊙ M)."""
        with torch.no_grad():
            for name in self.layers:
                w = self._latent(name)
                if w.grad is None:
                    continue
                score = self.scores[name]
                if score.device != w.device:
                    score = self.scores[name] = score.to(w.device)
                score.sub_((w * w.grad).float())
                w.grad.mul_(self._mask(name).to(w.grad.dtype))

    def after_step(self, step: int, lr: float) -> None:
        o, total = self.options, self.plan.total_steps
        start, end = int(o.start * total), int(o.end * total)
        if not (start <= step <= end and ((step - start) % o.frequency == 0 or step == end)):
            return
        self.sparsity = cubic_sparsity(step, start, end, o.target_sparsity)
        masks, self.threshold = top_scores(self.scores, self.sparsity, o.variant)
        with torch.no_grad():
            for name, keep in masks.items():
                self._mask(name).copy_(keep)

    def log_state(self) -> dict:
        out = {"scheduled_sparsity": self.sparsity}
        return out if self.threshold is None else {**out, "score_threshold": self.threshold}

    def summary(self) -> dict:
        return {"variant": self.options.variant, "target_sparsity": self.options.target_sparsity,
                "score_threshold": self.threshold}

    def state_dict(self) -> dict:
        return {"scores": {k: v.clone() for k, v in self.scores.items()}, "sparsity": self.sparsity,
                "threshold": self.threshold}

    def load_state_dict(self, state: dict) -> None:
        self.scores = {k: v.to(self._latent(k).device) for k, v in state["scores"].items()}
        self.sparsity, self.threshold = state["sparsity"], state["threshold"]

    def freeze(self) -> nn.Module:
        """Write W ⊙ M into plain weights."""
        for module in self.modules.values():
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        return super().freeze()
