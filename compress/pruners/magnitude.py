"""One-shot magnitude pruning: train dense, zero the smallest weights once, fine-tune with the mask."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from ..errors import UserError
from ..ranking import lowest_mask
from ..schema import opt
from ..selection import get_module
from .base import MaskPruner
from .registry import register_pruner


@dataclass
class MagnitudeOptions:
    sparsity: float = opt(0.9, "Fraction of the selected weights set to zero.",
                          lo=0.0, hi=1.0, hi_open=True, sparsity_goal=True)
    scope: Literal["global", "layer"] = opt("global", "global: one magnitude cut over all layers; "
                                            "layer: the same fraction in every layer.")
    prune_after: float = opt(0.5, "Fraction of the epochs trained dense before the one-shot prune; "
                             "the rest fine-tunes with the mask fixed.", lo=0.0, hi=1.0, hi_open=True)
    block: list[int] = opt([1, 1], "Prune whole [rows, cols] blocks of the 2-D weight (out, in·kh·kw), scored "
                           "by mean |w|, so BSR storage pays off; [1, 1] = single weights.", lo=1)

    def check(self, where: str) -> None:
        if len(self.block) != 2:
            raise UserError(f"{where}.block: expected [rows, cols], got {self.block}")


def smallest_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Boolean keep-mask that drops exactly round(sparsity·n) entries with the smallest score."""
    return ~lowest_mask(scores, round(sparsity * scores.numel()))


@register_pruner("magnitude")
class MagnitudePruner(MaskPruner):
    Options = MagnitudeOptions

    def __init__(self, options: MagnitudeOptions):
        super().__init__(options)
        self.options: MagnitudeOptions = options

    @property
    def prune_epoch(self) -> int:
        return math.floor(self.options.prune_after * self.plan.epochs)

    def begin_epoch(self, epoch: int) -> None:
        if epoch == self.prune_epoch and not self.masks:
            self.masks = magnitude_masks(self.model, self.layers, self.options.sparsity, self.options.scope,
                                         tuple(self.options.block))
            self.apply_masks()

    def log_state(self) -> dict:
        return {"pruned": bool(self.masks)}


def block_scores(w: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """|w| averaged over [rows, cols] blocks of the 2-D view, spread back to every element.

    Edges that do not fill a block are scored as partial blocks. Ties inside a block are broken
    by position, so a magnitude cut splits at most one block.
    """
    r, c = block
    a = w.detach().abs().reshape(w.shape[0], -1)
    if (r, c) == (1, 1):
        return a.view_as(w)
    rows, cols = a.shape
    padded = torch.nn.functional.pad(a, (0, -cols % c, 0, -rows % r))
    counts = torch.nn.functional.pad(torch.ones_like(a), (0, -cols % c, 0, -rows % r))
    pool = lambda t: torch.nn.functional.avg_pool2d(t[None, None], (r, c))[0, 0]  # noqa: E731
    means = pool(padded) / pool(counts).clamp_min(1e-12)
    spread = means.repeat_interleave(r, 0).repeat_interleave(c, 1)[:rows, :cols]
    return spread.reshape(w.shape)


def magnitude_masks(model, layers: list[str], sparsity: float, scope: str,
                    block: tuple[int, int] = (1, 1)) -> dict[str, torch.Tensor]:
    """Keep-masks by |w| (or block mean |w|): one cut over all layers (global) or one per layer."""
    weights = {n: block_scores(get_module(model, n).weight, tuple(block)) for n in layers}
    if scope == "layer":
        return {n: smallest_mask(w, sparsity) for n, w in weights.items()}
    flat = torch.cat([w.flatten() for w in weights.values()])
    keep = smallest_mask(flat, sparsity)
    masks, offset = {}, 0
    for n, w in weights.items():
        masks[n] = keep[offset:offset + w.numel()].view_as(w)
        offset += w.numel()
    return masks
