"""Stage train: the dense baseline and the pruned model, each resuming from its last epoch checkpoint.

With `model.weights`, both start from those weights; with `model.baseline = "given"` (the default
then) the dense baseline is that model as it is: evaluated, checkpointed, not retrained.
"""
from __future__ import annotations

import json

import torch
from safetensors.torch import save_file
from torch import nn

from compress import atomic, distributed
from compress.errors import UserError
from compress.pruners import Pruner
from compress.pruners.base import exact_zeros
from compress.loader import first
from compress.selection import get_module, select_layers
from compress.sparsity import global_sparsity
from compress.train import evaluate, train
from compress.weights import apply_weights, load_weights, weights_limit

from .run import SQUASHED, SUMMARY, Run, keep_given


def _given_baseline(run: Run, model: nn.Module, folder) -> None:
    """Checkpoint the given model as the finished dense baseline (one metrics row: its test accuracy)."""
    acc, loss = evaluate(model, run.data.test, workers=run.data.workers, num_classes=run.data.num_classes)
    row = {"epoch": run.cfg.train.epochs, "test_loss": loss, "test_accuracy": acc,
           "sparsity": global_sparsity(model, run.layers), "source": "weights"}
    if distributed.current().main:
        atomic.write_text(folder / "metrics.jsonl", json.dumps(row) + "\n")
        with atomic.atomic_path(folder / "checkpoint.pt") as tmp:
            torch.save({"epoch": run.cfg.train.epochs, "model": model.state_dict(), "optimizer": {},
                        "pruner": Pruner().state_dict(), "history": [row]}, tmp)


def _with_exact_zeros(model: nn.Module, layers: list[str]) -> nn.Module:
    """`model` with -0.0 written as +0.0 in its prunable layers, as every pruner's freeze leaves them."""
    with torch.no_grad():
        for name in layers:
            weight = get_module(model, name).weight
            weight.copy_(exact_zeros(weight))
    return model


def save_squashed(model: nn.Module, summary: dict, folder) -> None:
    """The trained model as plain weights with exact zeros, and the pruner's summary, for the freeze stage."""
    if distributed.current().main:
        with atomic.atomic_path(folder / SQUASHED) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
        atomic.write_json(folder / SUMMARY, summary)


def _latency_measure(run: Run):
    """How latency targets time candidate widths: onnxruntime at the freeze stage's batch and threads."""
    from ..cut_check import latency_ratio_measure

    c = run.cfg.freeze
    return latency_ratio_measure(first(run.data.test, max(c.latency_batch_size, 2))[0], c.latency_batch_size,
                                 c.latency_threads, precision=c.latency_precision, timer=run.timer)


def train_stage(run: Run) -> list[str]:
    out = []
    # chosen afresh: the train/layers.json in place may be from an earlier run with other inputs
    run.set_layers(select_layers(run.new_model(), run.cfg.prune.layers))
    weights = load_weights(run.cfg.model.weights, weights_limit(run.new_model())) if run.cfg.model.weights else None
    trained: dict[str, nn.Module] = {}
    for variant in run.variants:
        model, pruner = run.new_model(), run.new_pruner(variant)
        folder = run.stage_dir / variant
        if weights is not None:
            apply_weights(model, weights, run.cfg.model.weights, run.cfg.model.name)
        if keep_given(run, variant):
            _given_baseline(run, model, folder)
            squashed, summary = _with_exact_zeros(model, run.layers), {}
        else:
            train(model, pruner, run.data, run.cfg.train, run.layers, seed=run.cfg.seed, out_dir=folder,
                  desc=f"train {variant}", progress=run.progress, log_start=weights is not None,
                  latency_ratio=_latency_measure(run),
                  teacher=trained.get("dense") if variant == "sparse" else None)  # train.distill
            squashed, summary = pruner.freeze(), pruner.summary()
            if not isinstance(squashed, nn.Module) or not isinstance(summary, dict):
                raise UserError(f"prune.method: {run.cfg.prune.method!r}: freeze() must return the model (an "
                                f"nn.Module) and summary() a dict; got {type(squashed).__name__} and "
                                f"{type(summary).__name__}")
        save_squashed(squashed, summary, folder)
        trained[variant] = squashed
        out += [f"{variant}/{f}" for f in ("checkpoint.pt", "metrics.jsonl", SQUASHED, SUMMARY)]
    if distributed.current().main:
        atomic.write_json(run.stage_dir / "layers.json", run.layers)
    return out + ["layers.json"]
