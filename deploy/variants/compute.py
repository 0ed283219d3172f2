"""sparse-compute/: Linear layers that measure faster so run SparseToDenseMatMul on the CSR weights."""
from __future__ import annotations

from ..onnx_variants import make_sparse_compute
from ..report_rows import ms
from . import Variant, VariantInputs, register_variant

FILES = ("model.onnx", "manifest.json", "csr/weights.safetensors", "csr/manifest.json")


def _build(inputs: VariantInputs) -> dict:
    cfg = inputs.cfg
    manifest = make_sparse_compute(inputs.folder / "sparse.onnx", inputs.run_dir / "sparse",
                                   inputs.folder / "sparse-compute", batch=cfg.compute_batch,
                                   threads=cfg.compute_threads, min_sparsity=cfg.compute_min_sparsity,
                                   timer=inputs.timer)
    return {"path": "sparse-compute/", "sparse_layers": list(manifest["layers"]), "considered": manifest["considered"],
            "sparsity_carrier": "CSR weights (from the convert stage) bound at run time to SparseToDenseMatMul",
            "files": [f"sparse-compute/{f}" for f in FILES]}


def _rows(report) -> dict:
    return {"latency": [("  sparse-compute", "", ms(report.variants["sparse-compute"]["latency"]))]}


register_variant(Variant("sparse-compute", compared_with="sparse", artifact="sparse-compute",
                         enabled=lambda cfg: cfg.compute, build=_build, rows=_rows))
