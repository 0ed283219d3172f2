"""The staged pipeline over a run folder: train → freeze → convert → export → validate.

Each stage reads the previous stages' files and writes its own plus `STAGE/stage.json`
(fingerprint of its inputs, output hashes, library versions, wall time). A stage whose
manifest matches its current inputs and whose outputs are intact is skipped; one whose
inputs changed is wiped and re-run; training resumes from its last epoch checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import platform
import shutil
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from compress import __version__, atomic, distributed
from compress.data import Data, load_config_data
from compress.errors import UserError
from compress.models import build_model
from compress.pruners import Pruner, build_pruner
from compress.selection import clean_name, get_module, select_layers
from compress.sparsity import global_sparsity, layer_sparsity
from compress.structured import channel_groups, harvest_channels, remove_channels
from compress.train import load_checkpoint, make_plan, train

from . import formats
from .config import CONFIG_VERSION, RunConfig, load_config, resolved_table, to_toml
from .export import export_onnx
from .onnx_variants import make_compact, make_sparse_compute
from .quantize import quantize
from .runtime import open_model
from .gate import check
from .report import plot_training, write_report
from .validate import validate

STAGES = ("train", "freeze", "convert", "export", "validate")
STAGE_DIRS = {"train": "train", "freeze": "frozen", "convert": "sparse", "export": "onnx", "validate": "report"}
# Which config sections and which earlier stages each stage depends on.
CONFIG_INPUTS = {"train": ("seed", "data", "model", "prune", "train"), "freeze": ("model", "prune", "train"),
                 "convert": ("convert",), "export": ("export",), "validate": ("data", "export", "validate", "gate")}
UPSTREAM = {"train": (), "freeze": ("train",), "convert": ("freeze",), "export": ("freeze",),
            "validate": ("train", "freeze", "convert", "export")}


def versions() -> dict:
    import onnx
    import onnxruntime

    return {"sparsepipe": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__}


@dataclass
class Run:
    """A run folder and its resolved config; loads data and models on demand."""
    dir: Path
    cfg: RunConfig
    progress: bool = True
    log: Callable[[str], None] = print
    _data: Data | None = field(default=None, repr=False)

    @property
    def table(self) -> dict:
        return resolved_table(self.cfg)

    @property
    def variants(self) -> list[str]:
        """Trained models: the dense baseline and, unless the method is dense, the pruned one."""
        return ["dense"] if self.cfg.prune.method == "dense" else ["dense", "sparse"]

    def trained(self, variant: str) -> str:
        return variant if variant in self.variants else "dense"

    @property
    def data(self) -> Data:
        if self._data is None:
            self._data = load_config_data(self.cfg.data, seed=self.cfg.seed)
        return self._data

    def new_model(self) -> nn.Module:
        torch.manual_seed(self.cfg.seed)
        return build_model(self.cfg.model, self.data.input_shape, self.data.num_classes)

    def new_pruner(self, variant: str) -> Pruner:
        return build_pruner(self.cfg.prune) if variant == "sparse" else Pruner()

    @cached_property
    def layers(self) -> list[str]:
        path = self.dir / "train" / "layers.json"
        return json.loads(path.read_text()) if path.exists() else select_layers(self.new_model(), self.cfg.prune.layers)

    def frozen_model(self, variant: str) -> nn.Module:
        """A plain model with the frozen weights of `variant` (dense or sparse), physically smaller
        where the freeze stage removed channels (frozen/structure.json)."""
        trained = self.trained(variant)
        path = self.dir / "frozen" / f"{trained}.safetensors"
        model = self.new_model()
        structure = self.dir / "frozen" / "structure.json"
        if trained == "sparse" and structure.exists():
            apply_structure(model, json.loads(structure.read_text()), self.data.input_shape)
        try:
            model.load_state_dict(load_file(str(path)))
        except Exception as e:
            raise UserError(f"{path}: does not fit model {self.cfg.model.name!r} ({str(e).splitlines()[0][:200]})") \
                from None
        return model.eval()


def apply_structure(model: nn.Module, structure: dict, input_shape: tuple[int, ...]) -> None:
    """Cut `model` to the recorded widths (for each group, named by its first producer, keep those
    channels), with a bias on the consumers the harvest folded constant channels into."""
    if not structure.get("keep"):
        return
    for name in structure.get("biased", []):
        m = model.get_submodule(name)
        m.bias = nn.Parameter(torch.zeros(m.weight.shape[0], dtype=m.weight.dtype))
    groups = {g.producers[0]: g for g in channel_groups(model, torch.zeros(2, *input_shape)) if g.producers}
    for producer, indices in structure["keep"].items():
        remove_channels(model, groups[producer], torch.tensor(indices, dtype=torch.long))


def harvest(model: nn.Module, input_shape: tuple[int, ...]) -> dict:
    """Remove dead channels in place (constants folded where exact): the kept channels per group, and sizes."""
    from .flops import count_macs

    def sizes(prefix: str) -> dict:
        return {f"params_{prefix}": sum(p.numel() for p in model.parameters()),
                f"macs_{prefix}": count_macs(model, input_shape)["dense"]}

    before = sizes("before")
    try:
        groups = channel_groups(model, torch.zeros(2, *input_shape))
    except ValueError as e:  # e.g. a model torch.fx cannot trace: nothing removed, and the report says why
        return {"keep": {}, "skipped": str(e), **before, **sizes("after")}
    widths = {g.producers[0]: g.size for g in groups if g.producers}
    result = harvest_channels(model.eval(), groups, input_shape)
    keep = result.keep
    return {"keep": keep, "biased": result.biased, "constant_channels_folded": result.folded,
            "widths": {p: (widths[p], len(k)) for p, k in keep.items()},
            "channels_removed": sum(widths[p] - len(k) for p, k in keep.items()), **before, **sizes("after")}


# ---- stages: each returns the files it wrote, relative to the run folder ----

def stage_train(run: Run) -> list[str]:
    out = []
    for variant in run.variants:
        model, pruner = run.new_model(), run.new_pruner(variant)
        folder = run.dir / "train" / variant
        train(model, pruner, run.data, run.cfg.train, run.layers, seed=run.cfg.seed, out_dir=folder,
              desc=f"train {variant}", progress=run.progress)
        out += [f"train/{variant}/checkpoint.pt", f"train/{variant}/metrics.jsonl"]
    if distributed.current().main:
        atomic.write_json(run.dir / "train" / "layers.json", run.layers)
    return out + ["train/layers.json"]


def stage_freeze(run: Run) -> list[str]:
    out, per_variant, summary = [], {}, {}
    for variant in run.variants:
        model, pruner = run.new_model(), run.new_pruner(variant)
        ckpt = run.dir / "train" / variant / "checkpoint.pt"
        names = {clean_name(n) for n, _ in model.named_modules()}
        missing = [n for n in run.layers if n not in names]
        if missing:
            raise UserError(f"{ckpt}: checkpoint does not fit model {run.cfg.model.name!r} "
                            f"(trained layer {missing[0]!r} does not exist in it)")
        pruner.attach(model, run.layers, make_plan(run.cfg.train, len(run.data.train), run.data.input_shape))
        state = load_checkpoint(ckpt)
        if state.get("epoch") != run.cfg.train.epochs:
            raise UserError(f"{ckpt}: training stopped at epoch {state.get('epoch')} of {run.cfg.train.epochs}; "
                            "run the train stage to finish it")
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise UserError(f"{ckpt}: checkpoint does not fit model {run.cfg.model.name!r} "
                            f"({str(e).splitlines()[0][:200]})") from None
        pruner.load_state_dict(state["pruner"])
        if variant == "sparse":
            summary = pruner.summary()
        frozen = pruner.freeze().cpu()
        with atomic.atomic_path(run.dir / "frozen" / f"{variant}.safetensors") as tmp:
            save_file({k: v.contiguous() for k, v in frozen.state_dict().items()}, str(tmp))
        out.append(f"frozen/{variant}.safetensors")
        per_variant[variant] = frozen
    sparse = per_variant[run.trained("sparse")]
    masks = {n: (get_module(sparse, n).weight != 0).to(torch.uint8) for n in run.layers}
    with atomic.atomic_path(run.dir / "frozen" / "masks.safetensors") as tmp:
        save_file(masks, str(tmp))
    atomic.write_json(run.dir / "frozen" / "sparsity.json", {
        "method": run.cfg.prune.method, "pruner": summary, "layers": run.layers,
        "global": global_sparsity(sparse, run.layers), "per_layer": layer_sparsity(sparse, run.layers),
        "dense_global": global_sparsity(per_variant["dense"], run.layers)})
    if "sparse" in run.variants:  # channels that carry only zeros are cut out: a smaller dense model
        structure = harvest(sparse, run.data.input_shape)
        if structure["keep"]:
            with atomic.atomic_path(run.dir / "frozen" / "sparse.safetensors") as tmp:
                save_file({k: v.contiguous() for k, v in sparse.state_dict().items()}, str(tmp))
        atomic.write_json(run.dir / "frozen" / "structure.json", structure)
        out.append("frozen/structure.json")
    return out + ["frozen/masks.safetensors", "frozen/sparsity.json"]


def stage_convert(run: Run) -> list[str]:
    model = run.frozen_model("sparse")
    weights = {n: get_module(model, n).weight.detach() for n in run.layers}
    folder = run.dir / "sparse"
    c = run.cfg.convert
    manifest = formats.save_sparse(folder, weights, model_id=run.cfg.model.name, choice=c.format,
                                   blocks=[tuple(b) for b in c.block_sizes])
    back = formats.load_sparse(folder)
    exact = all(torch.equal(back[n].view(torch.int32), w.view(torch.int32)) for n, w in weights.items())
    if not exact:
        raise RuntimeError("sparse-format round trip is not bit-exact")  # a bug of ours, not bad input
    manifest["roundtrip_bit_exact"] = exact
    atomic.write_json(folder / "manifest.json", manifest)
    return ["sparse/weights.safetensors", "sparse/manifest.json"]


def stage_export(run: Run) -> list[str]:
    cfg, folder = run.cfg.export, run.dir / "onnx"
    sample = run.data.test.x[:64]
    info = {v: export_onnx(run.frozen_model(v), sample, folder / f"{v}.onnx", cfg.opset) for v in ("dense", "sparse")}
    out = ["onnx/dense.onnx", "onnx/sparse.onnx"]
    with torch.no_grad():
        want = run.frozen_model("sparse")(sample).numpy()
    if cfg.compact:
        info["sparse-compact"] = make_compact(folder / "sparse.onnx", folder / "sparse-compact.onnx")
        info["sparse-compact"]["sparsity_carrier"] = "ONNX sparse initializers (densified by onnxruntime at load)"
        out.append("onnx/sparse-compact.onnx")
    if cfg.compute:
        manifest = make_sparse_compute(folder / "sparse.onnx", folder / "sparse-compute", batch=cfg.compute_batch,
                                       threads=cfg.compute_threads, min_sparsity=cfg.compute_min_sparsity)
        info["sparse-compute"] = {"path": "sparse-compute/", "sparse_layers": list(manifest["layers"]),
                                  "considered": manifest["considered"],
                                  "sparsity_carrier": "CSR weights bound at run time to SparseToDenseMatMul"}
        out += [f"onnx/sparse-compute/{f}" for f in ("model.onnx", "weights.safetensors", "manifest.json")]
    if cfg.int8 != "none":
        calibration = run.data.train.x[:cfg.calibration_samples].numpy()
        for v in ("dense", "sparse"):
            info[f"{v}-int8"] = quantize(folder / f"{v}.onnx", folder / f"{v}-int8.onnx", cfg.int8, calibration)
            out.append(f"onnx/{v}-int8.onnx")
    for name in ("sparse-compact", "sparse-compute"):
        if name in info:
            path = folder / ("sparse-compact.onnx" if name == "sparse-compact" else "sparse-compute")
            session = open_model(path)
            got = session.run(None, {session.get_inputs()[0].name: sample.numpy()})[0]
            info[name]["max_abs_diff_vs_torch"] = float(np.abs(got - want).max())
    atomic.write_json(folder / "export.json", info)
    return out + ["onnx/export.json"]


def spiking_summary(models: dict[str, nn.Module], x: torch.Tensor) -> dict:
    """Firing rate of every neuron layer (PyTorch, dense and sparse) and the layers that never fire."""
    from compress.models.spiking import firing_rates

    rates = {v: firing_rates(models[v], x) for v in ("dense", "sparse")}
    return {"time_steps": getattr(models["sparse"], "time_steps", None), "firing_rates": rates,
            "silent_layers": {v: [n for n, r in rates[v].items() if r == 0.0] for v in rates},
            "agreement_measure": "argmax agreement and mean |difference| (spikes are discontinuous)"}


def param_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.state_dict().values())


def stage_validate(run: Run) -> list[str]:
    cfg, d = run.cfg, run.dir
    models = {v: run.frozen_model(v) for v in ("dense", "sparse")}
    paths = {v: d / "onnx" / f"{v}.onnx" for v in models}
    if cfg.export.compact:
        paths["sparse-compact"] = d / "onnx" / "sparse-compact.onnx"
    if cfg.export.compute:
        paths["sparse-compute"] = d / "onnx" / "sparse-compute"
    if cfg.export.int8 != "none":
        paths.update({f"{v}-int8": d / "onnx" / f"{v}-int8.onnx" for v in ("dense", "sparse")})
    models.update({v: models["dense" if v.startswith("dense") else "sparse"] for v in paths if v not in models})
    x, y = run.data.test.x.numpy(), run.data.test.y.numpy()
    result = validate(paths, models, x, y, cfg.validate)
    sparsity = json.loads((d / "frozen" / "sparsity.json").read_text())
    csr = json.loads((d / "sparse" / "manifest.json").read_text())
    exported = json.loads((d / "onnx" / "export.json").read_text())
    dense_bytes = param_bytes(models["dense"])
    histories = {v: [json.loads(line) for line in (d / "train" / v / "metrics.jsonl").read_text().splitlines()]
                 for v in run.variants}
    report = {
        "run": cfg.name, "method": cfg.prune.method, "model": cfg.model.name, "data": cfg.data.name,
        "dense": result["dense"], "sparse": result["sparse"],
        "variants": {v: {**result[v], "latency": result["latency"][v]} for v in paths if v not in ("dense", "sparse")},
        "sparsity": {"global": sparsity["global"], "per_layer": sparsity["per_layer"],
                     "layers_pruned": len(sparsity["layers"])},
        "pruner": sparsity["pruner"],
        "structure": (json.loads((d / "frozen" / "structure.json").read_text())
                      if (d / "frozen" / "structure.json").exists() else None),
        "latency": result["latency"],
        "size": {"dense_bytes": dense_bytes,
                 "sparse_bytes": param_bytes(models["sparse"]) - csr["dense_bytes"] + csr["stored_bytes"],
                 "per_layer": {n: {k: v[k] for k in ("format", "block", "dense_bytes", "csr_bytes", "bsr_bytes",
                                                     "stored_bytes")} for n, v in csr["layers"].items()},
                 "dense_onnx_bytes": exported["dense"]["bytes"], "sparse_onnx_bytes": exported["sparse"]["bytes"],
                 **({"sparse_compact_onnx_bytes": exported["sparse-compact"]["bytes"]}
                    if "sparse-compact" in exported else {})},
        "export": exported,
        "training": {v: h[-1] for v, h in histories.items()},
        "versions": versions(),
        "machine": {"platform": platform.platform(), "processor": platform.machine(),
                    "cpus": torch.get_num_threads()},
    }
    if any(hasattr(m, "export_copy") for m in models.values()):
        report["spiking"] = spiking_summary(models, run.data.test.x[:256])
    checks = check(report, cfg.gate)
    report["gate"] = {"passed": all(c["passed"] for c in checks),
                      "failures": [c["message"] for c in checks if not c["passed"]],
                      "checks": checks, "thresholds": resolved_table(cfg)["gate"]}
    folder = d / "report"
    plot_training(histories, sparsity["per_layer"], folder / "training.png")
    report["artifacts"] = {
        "config": "config.toml", "checkpoints": [f"train/{v}/checkpoint.pt" for v in run.variants],
        "frozen": [f"frozen/{v}.safetensors" for v in run.variants], "sparse": "sparse/weights.safetensors",
        "dense_onnx": "onnx/dense.onnx", "sparse_onnx": "onnx/sparse.onnx",
        **({"sparse_compact_onnx": "onnx/sparse-compact.onnx"} if cfg.export.compact else {}),
        **({"sparse_compute": "onnx/sparse-compute"} if cfg.export.compute else {}),
        "report_md": "report/report.md",
        "junit": "report/junit.xml", "training_plot": "report/training.png"}
    write_report(folder, report)
    return ["report/report.json", "report/report.md", "report/junit.xml", "report/training.png"]


STAGE_FUNCS = {"train": stage_train, "freeze": stage_freeze, "convert": stage_convert,
               "export": stage_export, "validate": stage_validate}


# ---- manifests and skipping ----

def read_manifest(run: Run, stage: str) -> dict | None:
    path = run.dir / STAGE_DIRS[stage] / "stage.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # corrupt manifest: treat the stage as not done


def fingerprint(run: Run, stage: str) -> str:
    upstream = {}
    for up in UPSTREAM[stage]:
        manifest = read_manifest(run, up)
        if manifest is None:
            raise UserError(f"{run.dir}: stage '{stage}' needs stage '{up}' first "
                            f"(no {STAGE_DIRS[up]}/stage.json)")
        upstream[up] = manifest["outputs"]
    table = run.table
    blob = {"stage": stage, "config_version": CONFIG_VERSION,
            "config": {k: table[k] for k in CONFIG_INPUTS[stage]}, "upstream": upstream}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def up_to_date(run: Run, stage: str, fp: str) -> bool:
    manifest = read_manifest(run, stage)
    if manifest is None or manifest.get("fingerprint") != fp:
        return False
    for rel, digest in manifest["outputs"].items():
        path = run.dir / rel
        if not path.exists() or atomic.sha256_file(path) != digest:
            return False
    return True


def run_stage(run: Run, stage: str, force: bool = False) -> bool:
    """Run one stage unless up to date; returns True when it ran.

    Under torchrun every rank runs 'train'; rank 0 alone writes markers and manifests.
    """
    world = distributed.current()
    fp = fingerprint(run, stage)
    if not force and up_to_date(run, stage, fp):
        return False
    folder = run.dir / STAGE_DIRS[stage]
    marker = folder / ".inputs"
    if world.main:
        # Training must not resume from a checkpoint made with other inputs; the other stages
        # overwrite their files atomically, so what they produced before survives a failed re-run.
        if stage == "train" and (force or not marker.exists() or marker.read_text() != fp):
            shutil.rmtree(folder, ignore_errors=True)
        (folder / "stage.json").unlink(missing_ok=True)
        for stale in folder.rglob(".*.tmp"):  # left by a process killed mid-write
            stale.unlink()
        atomic.write_text(marker, fp)
    collective = stage == "train"  # the one stage all ranks run
    if collective:
        distributed.barrier()
    t0 = time.perf_counter()
    outputs = STAGE_FUNCS[stage](run)
    if collective:
        distributed.barrier()
    if not world.main:
        return True
    atomic.write_json(folder / "stage.json", {
        "stage": stage, "fingerprint": fp, "wall_time_s": round(time.perf_counter() - t0, 3),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": {k: run.table[k] for k in CONFIG_INPUTS[stage]},
        "inputs": {up: (read_manifest(run, up) or {}).get("fingerprint") for up in UPSTREAM[stage]},
        "outputs": {rel: atomic.sha256_file(run.dir / rel) for rel in outputs},
        "versions": versions()})
    return True


def open_run(run_dir: str | Path, cfg: RunConfig | None = None, **kwargs) -> Run:
    """A Run for `run_dir`: with `cfg`, (re)writes config.toml; without, reads the folder's config.toml."""
    run_dir = Path(run_dir)
    path = run_dir / "config.toml"
    if cfg is None:
        if not path.exists():
            raise UserError(f"{run_dir}: not a run folder (no config.toml)")
        try:
            import tomllib
            version = tomllib.loads(path.read_text()).get("config_version")
        except Exception:
            version = None
        if version != CONFIG_VERSION:
            raise UserError(f"{path}: config_version {version!r}, this sparsepipe reads version {CONFIG_VERSION}")
        cfg = load_config(path)
        return Run(run_dir, cfg, **kwargs)
    run = Run(run_dir, cfg, **kwargs)
    run.data  # bad or missing data fails here, before anything is written
    if distributed.current().main:
        atomic.write_text(path, to_toml(resolved_table(cfg)))
    distributed.barrier()
    return run


def run_pipeline(run: Run, stages: tuple[str, ...] = STAGES, force: bool = False) -> dict | None:
    """Run `stages` in order (skipping up-to-date ones) and return the report.

    Under torchrun, ranks other than 0 help with 'train' only and return None.
    """
    world = distributed.current()
    if not world.main:
        if "train" in stages:
            run_stage(run, "train", force=force)
        return None
    for i, stage in enumerate(stages, 1):
        t0 = time.perf_counter()
        ran = run_stage(run, stage, force=force)
        status = f"done in {time.perf_counter() - t0:.1f} s" if ran else "up to date, skipped"
        run.log(f"[{i}/{len(stages)}] {stage}: {status}")
    return json.loads((run.dir / "report" / "report.json").read_text())
