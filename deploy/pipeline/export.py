"""Stage export: dense and sparse ONNX from one code path, and the variants made from them
(compact sparse initializers, sparse-compute on convert's CSR weights, int8)."""
from __future__ import annotations

import json

import numpy as np
import torch

from compress import atomic
from compress.loader import first

from ..export import export_onnx, stamp_metadata
from ..onnx_variants import make_compact, make_sparse_compute
from ..quantize import quantize
from ..runtime import open_model
from .run import Run


def export_stage(run: Run) -> list[str]:
    cfg, folder = run.cfg.export, run.stage_dir
    sample, _ = first(run.data.test, 64)
    models = {v: run.frozen_model(v) for v in ("dense", "sparse")}
    metadata = {"sparsepipe.preprocessing": json.dumps(run.data.preprocessing),
                "sparsepipe.classes": str(run.data.num_classes), "sparsepipe.model": run.cfg.model.name}
    info = {v: export_onnx(models[v], sample, folder / f"{v}.onnx", cfg.opset, metadata) for v in models}
    out = ["dense.onnx", "sparse.onnx"]
    if cfg.compact:
        info["sparse-compact"] = make_compact(folder / "sparse.onnx", folder / "sparse-compact.onnx")
        info["sparse-compact"]["sparsity_carrier"] = "ONNX sparse initializers (densified by onnxruntime at load)"
        out.append("sparse-compact.onnx")
    if cfg.compute:
        manifest = make_sparse_compute(folder / "sparse.onnx", run.dir / "sparse", folder / "sparse-compute",
                                       batch=cfg.compute_batch, threads=cfg.compute_threads,
                                       min_sparsity=cfg.compute_min_sparsity, timer=run.timer)
        info["sparse-compute"] = {"path": "sparse-compute/", "sparse_layers": list(manifest["layers"]),
                                  "considered": manifest["considered"],
                                  "sparsity_carrier": "CSR weights (from the convert stage) bound at run time "
                                                      "to SparseToDenseMatMul"}
        out += [f"sparse-compute/{f}" for f in ("model.onnx", "manifest.json", "csr/weights.safetensors",
                                                      "csr/manifest.json")]
    if cfg.int8 != "none":
        calibration = first(run.data.train, cfg.calibration_samples)[0].numpy()
        for v in ("dense", "sparse"):
            info[f"{v}-int8"] = quantize(folder / f"{v}.onnx", folder / f"{v}-int8.onnx", cfg.int8, calibration,
                                       timing=(cfg.compute_batch, cfg.compute_threads), timer=run.timer)
            stamp_metadata(folder / f"{v}-int8.onnx", metadata)
            out.append(f"{v}-int8.onnx")
    with torch.no_grad():
        want = models["sparse"](sample).numpy()
    for name, path in (("sparse-compact", folder / "sparse-compact.onnx"), ("sparse-compute", folder / "sparse-compute")):
        if name in info:
            session = open_model(path)
            got = session.run(None, {session.get_inputs()[0].name: sample.numpy()})[0]
            info[name]["max_abs_diff_vs_torch"] = float(np.abs(got - want).max())
    atomic.write_json(folder / "export.json", info)
    return out + ["export.json"]

