"""A pruner a user could write: named in a config as 'custom_pruner:HalfPruner'."""
from dataclasses import dataclass

import torch

from compress.pruners import MaskPruner
from compress.schema import opt


@dataclass
class HalfOptions:
    fraction: float = opt(0.5, "Fraction of every layer's weights zeroed (the first ones, in order).", lo=0.0, hi=1.0)


class HalfPruner(MaskPruner):
    Options = HalfOptions

    def __init__(self, options: HalfOptions):
        super().__init__(options)
        self.options: HalfOptions = options

    def begin_epoch(self, epoch: int) -> None:
        if not self.masks:
            for n, m in self.modules.items():
                mask = torch.ones_like(m.weight, dtype=torch.bool).flatten()
                mask[: int(self.options.fraction * mask.numel())] = False
                self.masks[n] = mask.view_as(m.weight)
            self.apply_masks()


class NotAPruner:
    pass
