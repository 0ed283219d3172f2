"""The optional methods a model class may define to change how it is exported and reported.

The pipeline knows no model family by name: a model that needs something of its own says so
through these methods, and export and validate ask for them here. Spiking models use both.

- `export_copy(self) -> nn.Module`: the module to export instead of the model itself (same function;
  e.g. neurons that keep no state between calls). Its graph is exported without onnxscript's
  optimizer, which fails on some such graphs (onnxruntime optimises at load anyway).
- `report_summary(dense, sparse, x) -> dict` (a static method): a block of the model's own figures for
  report.json's `spiking` field, from the dense and sparse PyTorch models on test inputs `x`.
"""
from __future__ import annotations

import torch
from torch import nn


def export_form(model: nn.Module) -> tuple[nn.Module, bool]:
    """The module to export for `model` and whether the exporter's graph optimizer may run on it."""
    if hasattr(model, "export_copy"):
        return model.export_copy().eval(), False
    return model, True


def report_summary(dense: nn.Module, sparse: nn.Module, x: torch.Tensor) -> dict | None:
    """The sparse model's own report block (see `report_summary` above), or None if its class has none."""
    summarize = getattr(type(sparse), "report_summary", None)
    return summarize(dense, sparse, x) if summarize is not None else None
