"""One-shot magnitude pruning: train dense, zero the smallest weights once, fine-tune with the mask."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from ..schema import opt
from ..selection import get_module
from .base import MaskPruner


@dataclass
class MagnitudeOptions:
    sparsity: float = opt(0.9, "Fraction of the selected weights set to zero.", lo=0.0, hi=1.0, hi_open=True)
    scope: Literal["global", "layer"] = opt("global", "global: one magnitude cut over all layers; "
                                            "layer: the same fraction in every layer.")
    prune_after: float = opt(0.5, "Fraction of the epochs trained dense before the one-shot prune; "
                             "the rest fine-tunes with the mask fixed.", lo=0.0, hi=1.0, hi_open=True)


def smallest_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Boolean keep-mask that drops exactly round(sparsity·n) entries with the smallest score."""
    flat = scores.flatten()
    n_drop = int(round(sparsity * flat.numel()))
    keep = torch.ones_like(flat, dtype=torch.bool)
    if n_drop:
        keep[torch.argsort(flat, stable=True)[:n_drop]] = False
    return keep.view_as(scores)


class MagnitudePruner(MaskPruner):
    name = "magnitude"
    options: MagnitudeOptions

    @property
    def prune_epoch(self) -> int:
        return math.floor(self.options.prune_after * self.plan.epochs)

    def begin_epoch(self, epoch: int) -> None:
        if epoch == self.prune_epoch and not self.masks:
            self.masks = magnitude_masks(self.model, self.layers, self.options.sparsity, self.options.scope)
            self.apply_masks()

    def log_state(self) -> dict:
        return {"pruned": bool(self.masks)}


def magnitude_masks(model, layers: list[str], sparsity: float, scope: str) -> dict[str, torch.Tensor]:
    """Keep-masks by |w|: one cut over all layers (global) or one per layer."""
    weights = {n: get_module(model, n).weight.detach() for n in layers}
    if scope == "layer":
        return {n: smallest_mask(w.abs(), sparsity) for n, w in weights.items()}
    flat = torch.cat([w.abs().flatten() for w in weights.values()])
    keep = smallest_mask(flat, sparsity)
    masks, offset = {}, 0
    for n, w in weights.items():
        masks[n] = keep[offset:offset + w.numel()].view_as(w)
        offset += w.numel()
    return masks
