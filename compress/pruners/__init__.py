"""Pruning methods by name, each behind the `Pruner` protocol (see base.py)."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from ..schema import opt
from ..selection import LayerRule
from .base import MaskPruner, Pruner, TrainPlan
from .lats import LATSOptions, LATSPruner
from .magnitude import MagnitudeOptions, MagnitudePruner

PRUNERS: dict[str, type[Pruner]] = {
    "dense": Pruner,
    "magnitude": MagnitudePruner,
    "lats": LATSPruner,
}


@dataclass
class PruneConfig:
    method: str = opt("lats", "Pruning method: " + ", ".join(PRUNERS) + ".")
    layers: LayerRule = opt(LayerRule(), "Which layers are pruned.")
    lats: LATSOptions = opt(LATSOptions(), "Options of method 'lats'.")
    magnitude: MagnitudeOptions = opt(MagnitudeOptions(), "Options of method 'magnitude'.")

    def check(self, where: str) -> None:
        if self.method not in PRUNERS:
            raise UserError(f"{where}.method: unknown method {self.method!r} (expected one of: {', '.join(PRUNERS)})")


def build_pruner(cfg: PruneConfig) -> Pruner:
    """The configured pruner, not yet attached to a model."""
    options = getattr(cfg, cfg.method, None)
    return PRUNERS[cfg.method](options)


__all__ = ["PRUNERS", "PruneConfig", "Pruner", "MaskPruner", "TrainPlan", "build_pruner"]
