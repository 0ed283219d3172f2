"""dense-int8.onnx and sparse-int8.onnx: each fp32 model quantized ([export] int8: dynamic or static)."""
from __future__ import annotations

from ..export import stamp_metadata
from ..quantize import quantize
from ..report_rows import ms, pct
from . import Variant, VariantInputs, register_variant


def _builder(source: str):
    def build(inputs: VariantInputs) -> dict:
        cfg, dst = inputs.cfg, inputs.folder / f"{source}-int8.onnx"
        info = quantize(inputs.folder / f"{source}.onnx", dst, cfg.int8, inputs.calibration(),
                        timing=(cfg.compute_batch, cfg.compute_threads), timer=inputs.timer)
        stamp_metadata(dst, inputs.metadata)
        return {**info, "files": [dst.name]}
    return build


def _rows(report) -> dict:
    """One pair of rows for both int8 models (on the sparse one: it comes second)."""
    dense, sparse = report.variants.get("dense-int8"), report.variants["sparse-int8"]
    if dense is None:
        return {}
    return {"accuracy": [("accuracy int8 (onnxruntime)", pct(dense["accuracy"]), pct(sparse["accuracy"]))],
            "latency": [("  int8", ms(dense["latency"]), ms(sparse["latency"]))]}


for _source in ("dense", "sparse"):
    register_variant(Variant(f"{_source}-int8", compared_with=_source, artifact=f"{_source}-int8.onnx",
                             enabled=lambda cfg: cfg.int8 != "none", build=_builder(_source),
                             check_against_torch=False, rows=_rows if _source == "sparse" else None))
