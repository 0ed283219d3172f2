"""Export variants by name: ONNX models made beside dense.onnx and sparse.onnx, one module each.

A variant module registers a `Variant`: its name (the report's key), the PyTorch model its outputs
are compared with ('dense' or 'sparse'), the artifact validate opens (relative to onnx/), the
[export] switch that turns it on, the function that builds it, and its rows in the report. The export stage builds every
enabled variant, the validate stage validates each against its PyTorch model; adding a variant is
adding a module to this package (found on the first lookup).
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..latency import Timer, compare_latency
from ..sections import ExportConfig

if TYPE_CHECKING:
    from ..report_schema import Report

Row = tuple[str, str, str]  # (metric, dense, sparse) in the report's summary table


@dataclass
class VariantInputs:
    """What a builder may read: the export folder being written (dense.onnx and sparse.onnx are in it),
    the run folder (e.g. the convert stage's sparse/), [export], the ONNX metadata, calibration rows."""
    folder: Path
    run_dir: Path
    cfg: ExportConfig
    metadata: dict[str, str]
    calibration: Callable[[], np.ndarray]
    timer: Timer = compare_latency  # what the timing decisions (sparse or dense per layer, int8 or float) call


@dataclass(frozen=True)
class Variant:
    name: str
    compared_with: str                          # the PyTorch model: "dense" or "sparse"
    artifact: str                               # the file or folder validate opens, relative to onnx/
    enabled: Callable[[ExportConfig], bool]
    build: Callable[[VariantInputs], dict]      # writes into inputs.folder; returns its export.json entry
                                                # with "files": the paths written (relative to the folder)
    check_against_torch: bool = True            # export records its max |difference| from the PyTorch model
    # its rows in the report's summary table, by section ("accuracy", "latency", "size"), when it was validated
    rows: Callable[["Report"], dict[str, list[Row]]] | None = field(default=None, compare=False)

    @property
    def key(self) -> str:
        """Its name in the report's artifacts: 'sparse-compact' → 'sparse_compact_onnx'."""
        return self.name.replace("-", "_") + ("_onnx" if self.artifact.endswith(".onnx") else "")


_VARIANTS: dict[str, Variant] = {}
_LOADED = False


def register_variant(variant: Variant) -> Variant:
    """Make `variant` known by its name (a second, different one of the same name is an error)."""
    known = _VARIANTS.get(variant.name)
    if known is not None and known != variant:
        raise ValueError(f"register_variant: {variant.name!r} is already registered")
    _VARIANTS[variant.name] = variant
    return variant


def registered_variants() -> dict[str, Variant]:
    """Every variant by name, built-ins first (in module order)."""
    global _LOADED
    if not _LOADED:
        _LOADED = True
        for info in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{info.name}")
    return dict(_VARIANTS)


def enabled_variants(cfg: ExportConfig) -> list[Variant]:
    """The variants [export] turns on, in registration order."""
    return [v for v in registered_variants().values() if v.enabled(cfg)]
