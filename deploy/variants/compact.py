"""sparse-compact.onnx: sparse.onnx with its weight matrices as ONNX sparse initializers."""
from __future__ import annotations

from ..onnx_variants import make_compact
from . import Variant, VariantInputs, register_variant


def _build(inputs: VariantInputs) -> dict:
    info = make_compact(inputs.folder / "sparse.onnx", inputs.folder / "sparse-compact.onnx")
    info["sparsity_carrier"] = "ONNX sparse initializers (densified by onnxruntime at load)"
    return {**info, "files": ["sparse-compact.onnx"]}


def _rows(report) -> dict:
    size = report.size.get("sparse_compact_onnx_bytes")
    return {} if size is None else {"size": [("  sparse-compact ONNX file", "", f"{size:,} B")]}


register_variant(Variant("sparse-compact", compared_with="sparse", artifact="sparse-compact.onnx",
                         enabled=lambda cfg: cfg.compact, build=_build, rows=_rows))
