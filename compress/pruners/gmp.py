"""Gradual magnitude pruning (Zhu & Gupta 2017): sparsity follows a cubic ramp, masks by |w|."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import UserError
from ..schedules import cubic_sparsity
from ..schema import opt
from .base import MaskPruner
from .magnitude import magnitude_masks
from .registry import register_pruner


@dataclass
class GMPOptions:
    sparsity: float = opt(0.9, "Final fraction of the selected weights set to zero.",
                          lo=0.0, hi=1.0, hi_open=True, sparsity_goal=True)
    scope: Literal["global", "layer"] = opt("global", "Magnitude cut over all layers or per layer.")
    start: float = opt(0.1, "Fraction of training at which pruning starts.", lo=0.0, hi=1.0, hi_open=True)
    end: float = opt(0.7, "Fraction of training at which the final sparsity is reached.", lo=0.0, hi=1.0,
                     lo_open=True)
    frequency: int = opt(20, "Steps between mask updates.", lo=1)
    block: list[int] = opt([1, 1], "Prune whole [rows, cols] blocks (see magnitude.block).", lo=1)

    def check(self, where: str) -> None:
        if len(self.block) != 2:
            raise UserError(f"{where}.block: expected [rows, cols], got {self.block}")


@register_pruner("gmp")
class GMPPruner(MaskPruner):
    """Gradual magnitude pruning (Zhu & Gupta 2017): sparsity follows a cubic ramp, masks by |w|."""

    Options = GMPOptions

    def __init__(self, options: GMPOptions):
        super().__init__(options)
        self.options: GMPOptions = options

    def after_step(self, step: int, lr: float) -> None:
        o, total = self.options, self.plan.total_steps
        start, end = int(o.start * total), int(o.end * total)
        if start <= step <= end and (step - start) % o.frequency == 0 or step == end:
            target = cubic_sparsity(step, start, end, o.sparsity)
            if target > 0:
                self.masks = magnitude_masks(self.model, self.layers, target, o.scope, tuple(o.block))
        self.apply_masks()

    def log_state(self) -> dict:
        return {"masked": bool(self.masks)}
