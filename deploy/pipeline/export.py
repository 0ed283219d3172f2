"""Stage export: dense and sparse ONNX from one code path, and every export variant [export] turns on
(deploy/variants: compact sparse initializers, sparse-compute on convert's CSR weights, int8, ...),
each checked against the PyTorch model it stands for."""
from __future__ import annotations

import functools
import json

import numpy as np
import torch

from compress import atomic
from compress.loader import first
from compress.subsets import sample as class_sample

from ..export import export_onnx
from ..runtime import open_model
from ..variants import VariantInputs, enabled_variants
from .run import Run


def export_stage(run: Run) -> list[str]:
    cfg, folder = run.cfg.export, run.stage_dir
    sample, _ = first(run.data.test, 64)
    models = {v: run.frozen_model(v) for v in ("dense", "sparse")}
    metadata = {"sparsepipe.preprocessing": json.dumps(run.data.preprocessing),
                "sparsepipe.classes": str(run.data.num_classes), "sparsepipe.model": run.cfg.model.name}
    info = {v: export_onnx(models[v], sample, folder / f"{v}.onnx", cfg.opset, metadata) for v in models}
    out = ["dense.onnx", "sparse.onnx"]
    # seeded and class-stratified: the first N of a class-ordered folder would calibrate on one class
    calibration = functools.cache(lambda: first(class_sample(run.data.train, cfg.calibration_samples, run.cfg.seed),
                                                cfg.calibration_samples)[0].numpy())
    inputs = VariantInputs(folder, run.dir, cfg, metadata, calibration, run.timer)
    variants = enabled_variants(cfg)
    for variant in variants:
        info[variant.name] = variant.build(inputs)
        out += info[variant.name].pop("files")
    with torch.no_grad():
        want = {m: models[m](sample).numpy() for m in {v.compared_with for v in variants if v.check_against_torch}}
    for variant in variants:
        if variant.check_against_torch:
            session = open_model(folder / variant.artifact)
            got = session.run(None, {session.get_inputs()[0].name: sample.numpy()})[0]
            info[variant.name]["max_abs_diff_vs_torch"] = float(np.abs(got - want[variant.compared_with]).max())
    atomic.write_json(folder / "export.json", info)
    return out + ["export.json"]

