"""The deploy half as a Python API: a model pruned anywhere → frozen folder → CSR → ONNX →
onnxruntime validation → gate, in a run folder laid out as `sparsepipe run` lays it out.

    from deploy.api import deploy_pruned
    report = deploy_pruned(frozen, dense, "runs/mine", settings={"model": {"name": "mlp", "hidden": [64]}},
                           pruner=pruner)
    report.gate.passed, report.sparse.accuracy, report.sparsity.global_

The models must be plain modules (a frozen pruner's output: `pruner.freeze()`) whose weights fit the
model `[model]` describes (a zoo name, 'torchvision:NAME' or 'package.module:factory'), since the
frozen folder rebuilds them from that description. `[data]` is the data they are validated on.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

from torch import nn

from compress import atomic, distributed
from compress.errors import UserError
from compress.pruners import Pruner, option_classes
from compress.schema import parse, to_dict
from compress.selection import select_layers
from compress.sparsity import global_sparsity
from compress.train import evaluate

from .config import RunConfig, apply_overrides, load_config
from .pipeline.folder import RunLock, check_run_dir
from .pipeline.run import SQUASHED, SUMMARY, Run, open_run
from .pipeline.train import save_squashed
from .pipeline.runner import run_pipeline, run_stage
from .report_schema import Report

__all__ = ["deploy_pruned", "run_config"]

DEPLOY_STAGES = ("freeze", "convert", "export", "validate")


def run_config(settings: dict | str | Path | RunConfig | None = None, overrides: list[str] = ()) -> RunConfig:
    """A checked run configuration: a TOML file, a table shaped like one (`{"data": {"name": "digits"}}`),
    or a RunConfig; `overrides` are `section.key=value` strings as for `sparsepipe run --set`."""
    if isinstance(settings, RunConfig):
        settings = to_dict(settings)
    if isinstance(settings, (str, Path)):
        return load_config(settings, overrides)
    return parse(RunConfig, apply_overrides(copy.deepcopy(settings or {}), list(overrides)), "settings")


def _record_pruner(cfg: RunConfig, pruner: Pruner) -> None:
    """The run's [prune] says which method pruned the model, with its options when it has registered ones."""
    cfg.prune.method = pruner.name
    if type(pruner.options) is option_classes().get(pruner.name):
        cfg.prune.options[pruner.name] = copy.deepcopy(pruner.options)


def _training_record(models: dict[str, nn.Module], summary: dict, histories: dict[str, list[dict]] | None):
    """The train stage's files for models trained outside the pipeline: each model's metrics rows (given,
    or one row measured now) and its squashed weights (what the freeze stage reads), and the pruned layers."""
    def work(run: Run) -> list[str]:
        out = []
        for variant, model in models.items():
            save_squashed(model, summary if variant == "sparse" else {}, run.stage_dir / variant)
            out += [f"{variant}/{SQUASHED}", f"{variant}/{SUMMARY}"]
            rows = (histories or {}).get(variant)
            if not rows:
                acc, loss = evaluate(model, run.data.test, workers=run.data.workers, num_classes=run.data.num_classes)
                rows = [{"epoch": run.cfg.train.epochs, "test_loss": loss, "test_accuracy": acc,
                         "sparsity": global_sparsity(model, run.layers), "source": "trained outside the pipeline"}]
            atomic.write_text(run.stage_dir / variant / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
            out.append(f"{variant}/metrics.jsonl")
        atomic.write_json(run.stage_dir / "layers.json", run.layers)
        return out + ["layers.json"]
    return work


def deploy_pruned(sparse: nn.Module, dense: nn.Module, run_dir: str | Path,
                  settings: dict | str | Path | RunConfig | None = None, *, overrides: list[str] = (),
                  pruner: Pruner | None = None, layers: list[str] | None = None,
                  histories: dict[str, list[dict]] | None = None, progress: bool = False) -> Report:
    """Freeze, convert, export, validate and gate `sparse` (pruned anywhere, plain modules with exact
    zeros) against its `dense` baseline into `run_dir`; returns the report (also report/report.json).
    The models are recorded as the train stage's output; the stages after it run as in `sparsepipe run`.

    `settings` as for `run_config` ([model] must describe the models, [data] is the validation data;
    [convert], [export], [validate] and [gate] apply as in `sparsepipe run`). `pruner`: the pruner
    that pruned it (its name, options, pruned layers and summary go into the run). `layers`: the
    pruned layers (default: the pruner's, else [prune.layers]). `histories`: per model ("dense",
    "sparse") the metrics rows of its training (epoch, test_accuracy, sparsity), for the report's plot.
    """
    if distributed.current().size > 1:
        raise UserError("deploy_pruned: call it from one process (rank 0), not under torchrun")
    cfg = run_config(settings, overrides)
    if pruner is not None:
        _record_pruner(cfg, pruner)
    if cfg.prune.method == "dense":
        raise UserError("deploy_pruned: prune.method is 'dense'; name the method that pruned the model "
                        "(pass pruner=, or set prune.method)")
    check_run_dir(Path(run_dir))  # never into a folder of someone else's files
    with RunLock(Path(run_dir)):
        return _deploy(sparse, dense, open_run(run_dir, cfg, progress=progress), cfg, pruner, layers, histories)


def _deploy(sparse: nn.Module, dense: nn.Module, run: Run, cfg: RunConfig, pruner: Pruner | None,
            layers: list[str] | None, histories: dict[str, list[dict]] | None) -> Report:
    models = {"dense": copy.deepcopy(dense).cpu().eval(), "sparse": copy.deepcopy(sparse).cpu().eval()}
    for variant, model in models.items():
        try:
            run.new_model().load_state_dict(model.state_dict())
        except RuntimeError as e:
            raise UserError(f"deploy_pruned: the {variant} model does not fit model {cfg.model.name!r} as [model] "
                            f"describes it ({str(e).splitlines()[0][:200]})") from None
    run.set_layers(layers or (pruner.layers if pruner is not None else select_layers(models["sparse"],
                                                                                     cfg.prune.layers)))
    summary = pruner.summary() if pruner is not None else {}
    # always re-recorded (its fingerprint, the config, does not see the models); the stages after it
    # see the files it writes, so they run again exactly when the models changed
    run_stage(run, "train", force=True, work=_training_record(models, summary, histories))
    return run_pipeline(run, DEPLOY_STAGES)
