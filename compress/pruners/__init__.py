"""Pruning methods by name, each behind the `Pruner` protocol (see base.py).

One registry: a built-in name, or a user's class named 'package.module:Class' (a Pruner subclass
whose `Options` dataclass is filled from [prune.custom]).
"""
from __future__ import annotations

from ..config.prune import PruneConfig
from ..errors import UserError
from ..imports import load_object
from ..schema import parse
from .base import MaskPruner, Pruner, TrainPlan
from .filters import FilterPruner, L1FilterPruner
from .greg import GRegPruner
from .lats import LATSPruner
from .magnitude import GMPPruner, L1Pruner, MagnitudePruner
from .str_reparam import STRPruner

PRUNERS: dict[str, type[Pruner]] = {
    "dense": Pruner,
    "magnitude": MagnitudePruner,
    "lats": LATSPruner,
    "str": STRPruner,
    "greg": GRegPruner,
    "l1": L1Pruner,
    "gmp": GMPPruner,
    "filter": FilterPruner,
}


def pruner_class(cfg: PruneConfig) -> type[Pruner]:
    """The class that runs `cfg.method` (a built-in name or 'package.module:Class')."""
    if cfg.method == "l1" and cfg.l1.granularity == "filter":
        return L1FilterPruner  # l1's channel mode: the filter cut with GReg's pick rule
    if cfg.method in PRUNERS:
        return PRUNERS[cfg.method]
    cls = load_object(cfg.method, "prune.method")
    if not (isinstance(cls, type) and issubclass(cls, Pruner)):
        raise UserError(f"prune.method: {cfg.method!r} is not a subclass of compress.pruners.Pruner")
    return cls


def build_pruner(cfg: PruneConfig) -> Pruner:
    """The configured pruner with its typed options, not yet attached to a model."""
    cls = pruner_class(cfg)
    if cfg.method in PRUNERS:
        return cls(getattr(cfg, cfg.method, None))
    if cls.Options is None:
        if cfg.custom:
            raise UserError(f"prune.custom: {cfg.method!r} takes no options (it declares no Options dataclass)")
        return cls()
    return cls(parse(cls.Options, cfg.custom, "prune.custom"))


__all__ = ["PRUNERS", "PruneConfig", "Pruner", "MaskPruner", "TrainPlan", "build_pruner", "pruner_class"]
