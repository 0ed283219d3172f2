"""Stage train: the dense baseline and the pruned model, each resuming from its last epoch checkpoint."""
from __future__ import annotations

from compress import atomic, distributed
from compress.train import train

from .run import Run


def train_stage(run: Run) -> list[str]:
    out = []
    for variant in run.variants:
        model, pruner = run.new_model(), run.new_pruner(variant)
        train(model, pruner, run.data, run.cfg.train, run.layers, seed=run.cfg.seed,
              out_dir=run.dir / "train" / variant, desc=f"train {variant}", progress=run.progress)
        out += [f"train/{variant}/checkpoint.pt", f"train/{variant}/metrics.jsonl"]
    if distributed.current().main:
        atomic.write_json(run.dir / "train" / "layers.json", run.layers)
    return out + ["train/layers.json"]

