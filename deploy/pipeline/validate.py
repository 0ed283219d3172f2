"""Stage validate: accuracy and latency of every ONNX variant in onnxruntime, side by side with the
dense baseline; the gate; report.json / report.md / junit.xml / training.png."""
from __future__ import annotations

import json
import math
import platform
from dataclasses import asdict

import torch
from torch import nn

from compress.distributed import World
from compress.errors import UserError
from compress.limits import JSON_BYTES, load_json, read_text
from compress.loader import batches, first
from compress.models.hooks import report_summary
from compress.selection import get_module, layer_weight
from compress.structured.std_conv import fold_weight_standardization
from compress.structured.structure import model_sizes

from ..gate import check
from ..report import plot_training, write_report
from ..report_schema import GateResult, Report, Scores, Sparsity
from ..shipped import shipped_sparsity
from ..validate import validate
from ..variants import enabled_variants
from .provenance import versions
from .run import Run, keep_given


def slower_than_dense(latency: dict, tolerance: float = 1.05) -> list[str]:
    """A warning for every exported variant whose p50 is above `tolerance` × the dense model's."""
    return [f"variant {name} is slower than dense: x{lat['ratio_vs_dense']:.2f} p50 at batch "
            f"{latency['batch_size']}, {latency['threads']} thread(s)"
            for name, lat in latency.items() if isinstance(lat, dict) and lat.get("ratio_vs_dense", 0) > tolerance]


def param_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.state_dict().values())


def _size(path) -> int:
    """Bytes of a file, or of every file in a folder (a variant shipped as several files)."""
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _metrics(path) -> list[dict]:
    """A metrics.jsonl: one JSON object per epoch with a finite epoch, test_accuracy and sparsity."""
    rows = []
    for i, line in enumerate(read_text(path, JSON_BYTES, "training metrics").splitlines(), 1):
        try:
            row = json.loads(line, parse_constant=lambda name: None)  # NaN/Infinity fail the check below
        except (ValueError, RecursionError):
            row = None
        if not isinstance(row, dict) or not all(
                isinstance(row.get(k), (int, float)) and not isinstance(row.get(k), bool) and math.isfinite(row[k])
                for k in ("epoch", "test_accuracy", "sparsity")):
            raise UserError(f"{path}: line {i} is not a metrics row as sparsepipe writes it (finite epoch, "
                            f"test_accuracy and sparsity); re-run the train stage with --force")
        rows.append(row)
    if not rows:
        raise UserError(f"{path}: no metrics rows; re-run the train stage with --force")
    return rows


def _read(run: Run, rel: str):
    return load_json(run.dir / rel, rel)


def validate_stage(run: Run) -> list[str]:
    cfg, d = run.cfg, run.dir
    models = {v: run.frozen_model(v) for v in ("dense", "sparse")}
    variants = enabled_variants(cfg.export)
    paths = {**{v: d / "onnx" / f"{v}.onnx" for v in models}, **{v.name: d / "onnx" / v.artifact for v in variants}}
    torch_models = {**models, **{v.name: models[v.compared_with] for v in variants}}
    def test_batches():
        for x, y in batches(run.data.test, cfg.validate.batch_size, shuffle=False, workers=run.data.workers,
                            world=World(), num_classes=run.data.num_classes, where="test split"):
            yield x.numpy(), y.numpy()

    result = validate(paths, torch_models, test_batches, cfg.validate, timer=run.timer)
    sparsity, csr, exported = _read(run, "frozen/sparsity.json"), _read(run, "sparse/manifest.json"), \
        _read(run, "onnx/export.json")
    structure = _read(run, "frozen/structure.json") if (d / "frozen" / "structure.json").exists() else None
    histories = {v: _metrics(d / "train" / v / "metrics.jsonl") for v in run.variants}
    # sizes of what ships: weight-standardised convs folded to plain ones, as export writes them
    shipping = {v: fold_weight_standardization(models[v]) for v in ("dense", "sparse")}
    dense_bytes = param_bytes(shipping["dense"])
    if not isinstance(sparsity, dict) or not isinstance(sparsity.get("per_layer"), dict) \
            or not isinstance(sparsity.get("pruner"), dict):
        raise UserError(f"{d / 'frozen' / 'sparsity.json'}: not as sparsepipe writes it (per_layer and pruner "
                        f"tables expected); re-run freeze")
    weights = {n: layer_weight(models["sparse"], n).detach().cpu().numpy() for n in run.layers}
    shipped = shipped_sparsity(d, {n: list(w.shape) for n, w in weights.items()},
                               {n: get_module(models["dense"], n).weight.numel() for n in run.layers},
                               sparsity["per_layer"], frozen=weights)
    if structure is not None:  # the counts the report shows, measured on the models that ship
        structure = {**structure, **model_sizes(shipping["dense"], run.data.input_shape, "before"),
                     **model_sizes(shipping["sparse"], run.data.input_shape, "after")}
    layer_bytes = {n: w.size * w.itemsize for n, w in weights.items()}
    report = Report(
        run=cfg.name, method=cfg.prune.method, model=cfg.model.name, data=cfg.data.name,
        dense=Scores(**result["dense"]), sparse=Scores(**result["sparse"]),
        variants={v: {**result[v], "latency": result["latency"][v]} for v in paths if v not in ("dense", "sparse")},
        sparsity=Sparsity(shipped["global"], shipped["per_layer"], len(run.layers), shipped["counted_from"]),
        pruner=sparsity["pruner"], structure=structure, latency=result["latency"],
        size={"dense_bytes": dense_bytes,
              "sparse_bytes": param_bytes(shipping["sparse"]) - sum(layer_bytes.values())
              + sum(shipped["stored_bytes"].values()),
              "per_layer": {n: {"format": (csr["layers"].get(n) or {}).get("format"), "dense_bytes": layer_bytes[n],
                                "stored_bytes": shipped["stored_bytes"][n]} for n in run.layers},
              "dense_onnx_bytes": _size(paths["dense"]), "sparse_onnx_bytes": _size(paths["sparse"]),
              **{f"{v.key}_bytes": _size(paths[v.name]) for v in variants if paths[v.name].exists()}},
        export=exported, training={v: h[-1] for v, h in histories.items()}, versions=versions(),
        machine={"platform": platform.platform(), "processor": platform.machine(), "cpus": torch.get_num_threads()})
    report.spiking = report_summary(models["dense"], models["sparse"], first(run.data.test, 256)[0])
    report.classes = run.data.num_classes
    checks = check(report, cfg.gate)
    report.dense.source = "weights" if keep_given(run, "dense") else "trained"
    report.preprocessing = run.data.preprocessing
    cut_timing = (structure or {}).get("latency_check")
    if cut_timing and not cut_timing["kept"]:
        report.warnings.append(f"the channel cut ({structure['not_kept']['channels_removed']} channels) measured "
                               f"x{cut_timing['ratio']:.2f} the latency of the uncut model, so the uncut model was kept")
    report.warnings += slower_than_dense(result["latency"])
    report.warnings += [f"training {v}: {w}" for v, rows in histories.items() for r in rows
                        for w in r.get("warnings", [])]
    chance = 1 / run.data.num_classes
    for name, scores in (("dense baseline", report.dense), ("sparse model", report.sparse)):
        if scores.accuracy <= 1.5 * chance:
            report.warnings.append(f"{name} accuracy {scores.accuracy:.2%} is near chance ({chance:.2%} for "
                                   f"{run.data.num_classes} classes): it has not learned the task")
    report.gate = GateResult(passed=all(c["passed"] for c in checks),
                             failures=[c["message"] for c in checks if not c["passed"]], checks=checks,
                             thresholds=asdict(cfg.gate))
    folder = run.stage_dir
    plot_training(histories, shipped["per_layer"], folder / "training.png")
    report.artifacts = {
        "config": "config.toml", "checkpoints": [f"train/{v}/checkpoint.pt" for v in run.variants
                                             if (d / "train" / v / "checkpoint.pt").exists()],
        "frozen": [f"frozen/{v}.safetensors" for v in run.variants] + ["frozen/model.json"],
        "sparse": "sparse/weights.safetensors", "dense_onnx": "onnx/dense.onnx", "sparse_onnx": "onnx/sparse.onnx",
        **{v.key: f"onnx/{v.artifact}" for v in variants},
        "report_md": "report/report.md", "junit": "report/junit.xml", "training_plot": "report/training.png"}
    write_report(folder, report)
    return ["report.json", "report.md", "junit.xml", "training.png"]

