"""One-shot magnitude pruning: train dense, zero the smallest weights once, fine-tune with the mask."""
from __future__ import annotations

import math

import torch

from ..schedules import cubic_sparsity
from ..config.prune import GMPOptions, L1Options, MagnitudeOptions
from ..selection import get_module
from .base import MaskPruner
from ..ranking import lowest_mask
from .groups import pick_pruned


def smallest_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Boolean keep-mask that drops exactly round(sparsity·n) entries with the smallest score."""
    return ~lowest_mask(scores, round(sparsity * scores.numel()))


class MagnitudePruner(MaskPruner):
    name = "magnitude"
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


class L1Pruner(MaskPruner):
    """One-shot layer-wise L1 pruning with GReg-1's selection rule: the fair baseline for GReg."""

    name = "l1"
    Options = L1Options

    def __init__(self, options: L1Options):
        super().__init__(options)
        self.options: L1Options = options

    def begin_epoch(self, epoch: int) -> None:
        if epoch == math.floor(self.options.prune_after * self.plan.epochs) and not self.masks:
            for n in self.layers:
                w = get_module(self.model, n).weight
                self.masks[n] = (~pick_pruned(w.detach().abs(), self.options.sparsity)).contiguous()
            self.apply_masks()


class GMPPruner(MaskPruner):
    """Gradual magnitude pruning (Zhu & Gupta 2017): sparsity follows a cubic ramp, masks by |w|."""

    name = "gmp"
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
