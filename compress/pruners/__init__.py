"""Pruning methods by name, each behind the `Pruner` protocol (see base.py)."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from ..schema import opt
from ..selection import LayerRule
from .base import MaskPruner, Pruner, TrainPlan
from .lats import LATSOptions, LATSPruner
from .filters import FilterOptions, FilterPruner
from .greg import GRegOptions, GRegPruner
from .magnitude import GMPOptions, GMPPruner, L1Options, L1Pruner, MagnitudeOptions, MagnitudePruner
from .str_reparam import STROptions, STRPruner

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


@dataclass
class PruneConfig:
    method: str = opt("lats", "Pruning method: " + ", ".join(PRUNERS) + ".")
    layers: LayerRule = opt(LayerRule(), "Which layers are pruned.")
    lats: LATSOptions = opt(LATSOptions(), "Options of method 'lats'.")
    magnitude: MagnitudeOptions = opt(MagnitudeOptions(), "Options of method 'magnitude'.")
    str: STROptions = opt(STROptions(), "Options of method 'str'.")
    greg: GRegOptions = opt(GRegOptions(), "Options of method 'greg' (GReg-1 / GReg-2).")
    l1: L1Options = opt(L1Options(), "Options of method 'l1' (one-shot L1 with GReg-1's selection rule).")
    gmp: GMPOptions = opt(GMPOptions(), "Options of method 'gmp' (gradual magnitude, cubic).")
    filter: FilterOptions = opt(FilterOptions(), "Options of method 'filter' (one-shot channel pruning, removed "
                                "physically at freeze).")

    def check(self, where: str) -> None:
        if self.method not in PRUNERS:
            raise UserError(f"{where}.method: unknown method {self.method!r} (expected one of: {', '.join(PRUNERS)})")


def build_pruner(cfg: PruneConfig) -> Pruner:
    """The configured pruner, not yet attached to a model."""
    if cfg.method == "l1" and cfg.l1.granularity == "filter":  # the channel baseline is the filter method
        return FilterPruner(FilterOptions(ratio=cfg.l1.sparsity, prune_after=cfg.l1.prune_after))
    options = getattr(cfg, cfg.method, None)
    return PRUNERS[cfg.method](options)


__all__ = ["PRUNERS", "PruneConfig", "Pruner", "MaskPruner", "TrainPlan", "build_pruner"]
