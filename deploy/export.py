"""ONNX export for dense and sparse models through one code path, checked and compared with PyTorch."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from torch import nn

from compress import atomic
from compress.errors import UserError
from compress.models.hooks import export_form
from compress.structured.std_conv import fold_weight_standardization
from .sections import ExportConfig

__all__ = ["ExportConfig", "export_onnx", "initializer_sparsity", "set_metadata", "stamp_metadata"]  # the section dataclass is re-exported for callers

INPUT, OUTPUT = "input", "logits"


def initializer_sparsity(model: onnx.ModelProto) -> float:
    """Fraction of exact zeros over the ONNX file's weight matrices/kernels (initializers with ndim >= 2)."""
    zeros = total = 0
    for init in model.graph.initializer:
        if len(init.dims) >= 2:
            a = numpy_helper.to_array(init)
            zeros += int((a == 0).sum())
            total += a.size
    return zeros / max(total, 1)


def set_metadata(proto: onnx.ModelProto, metadata: dict[str, str]) -> None:
    """Put `metadata` into the model's metadata_props (replacing entries of the same key)."""
    keep = [p for p in proto.metadata_props if p.key not in metadata]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)


def stamp_metadata(path: str | Path, metadata: dict[str, str]) -> None:
    """Add `metadata` to an ONNX file in place (atomically)."""
    proto = onnx.load(str(path))
    set_metadata(proto, metadata)
    with atomic.atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))


def export_onnx(model: nn.Module, sample: torch.Tensor, path: str | Path, opset: int = 18,
                metadata: dict[str, str] | None = None) -> dict:
    """Export `model` (eval mode, dynamic batch) to `path`; check it and compare with PyTorch on `sample`.
    `metadata` goes into the file's metadata_props (e.g. how to preprocess raw inputs).

    Returns opset, max |ONNX − PyTorch| on `sample`, and how sparsity is carried in the file.
    """
    path = Path(path)
    model = model.eval().cpu()
    projected = next((n for n, m in model.named_modules() if isinstance(m, nn.LSTM) and m.proj_size), None)
    if projected is not None:  # torch exports it as an ONNX LSTM, which has no projection: onnxruntime refuses it
        raise UserError(f"export: {projected} is an nn.LSTM with proj_size, which has no ONNX form "
                        "(the ONNX LSTM op has no projection); give it proj_size=0 to export the model")
    reference = model
    model, optimize = export_form(model)  # e.g. spiking models: a copy that keeps no state between calls
    model = fold_weight_standardization(model)  # NFNet, BiT: constants in inference, not standardised per call
    with atomic.atomic_path(path) as tmp, contextlib.redirect_stdout(io.StringIO()):  # the exporter's progress log
        torch.onnx.export(model, (sample[:2],), str(tmp), dynamo=True, opset_version=opset,
                          input_names=[INPUT], output_names=[OUTPUT], external_data=False,
                          dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False,
                          optimize=optimize)
        if metadata:
            proto = onnx.load(str(tmp))
            set_metadata(proto, metadata)
            onnx.save(proto, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)
    proto = onnx.load(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {INPUT: sample.numpy()})[0]
    with torch.no_grad():
        want = reference(sample).numpy()
    return {"path": path.name, "opset": opset, "bytes": path.stat().st_size,
            "max_abs_diff_vs_torch": float(np.abs(got - want).max()),
            "mean_abs_diff_vs_torch": float(np.abs(got - want).mean()),
            "argmax_agreement_vs_torch": float((got.argmax(1) == want.argmax(1)).mean()),
            "initializer_sparsity": initializer_sparsity(proto),
            "sparsity_carrier": "exact zeros in dense initializers (plain ops, runs anywhere)"}
