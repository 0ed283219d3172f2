"""dense-int8.onnx and sparse-int8.onnx: each fp32 model quantized ([export] int8: dynamic or static)."""
from __future__ import annotations

from ..export import stamp_metadata
from ..quantize import quantize
from . import Variant, VariantInputs, register_variant


def _builder(source: str):
    def build(inputs: VariantInputs) -> dict:
        cfg, dst = inputs.cfg, inputs.folder / f"{source}-int8.onnx"
        info = quantize(inputs.folder / f"{source}.onnx", dst, cfg.int8, inputs.calibration(),
                        timing=(cfg.compute_batch, cfg.compute_threads))
        stamp_metadata(dst, inputs.metadata)
        return {**info, "files": [dst.name]}
    return build


for _source in ("dense", "sparse"):
    register_variant(Variant(f"{_source}-int8", compared_with=_source, artifact=f"{_source}-int8.onnx",
                             enabled=lambda cfg: cfg.int8 != "none", build=_builder(_source),
                             check_against_torch=False))
