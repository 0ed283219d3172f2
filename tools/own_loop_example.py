"""Prune in your own PyTorch loop, then run sparsepipe's deploy half on the result.

A plain training loop on scikit-learn's digits with a pruner from the Python API (compress.api),
then convert → export → validate → gate (deploy.api) into a run folder:

    .venv/bin/python tools/own_loop_example.py --out runs/own-loop
    cat runs/own-loop/report/report.md
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from compress.api import attach_pruner, epoch_order, learning_rates, optimizer_groups  # noqa: E402
from compress.data import load_data  # noqa: E402
from compress.models import MLP  # noqa: E402
from deploy.api import deploy_pruned, run_config  # noqa: E402

SETTINGS = {"name": "own-loop", "data": {"name": "digits"}, "model": {"name": "mlp", "hidden": [128]},
            "validate": {"runs": 50, "latency_batch_size": 1, "threads": 1}}


def fit(model: nn.Module, pruner, data, train, seed: int) -> list[dict]:
    """Your loop: SGD at the run's learning rates, the pruner's hooks, one metrics row per epoch. The
    batches follow `epoch_order`, so the same settings give `sparsepipe run`'s result bit for bit."""
    steps = math.ceil(len(data.train.x) / train.batch_size)
    lr_at = learning_rates(train.lr, train.epochs, steps, train.lr_schedule, train.warmup_epochs)
    optimizer = torch.optim.SGD(optimizer_groups(model, pruner, weight_decay=train.weight_decay), lr=train.lr,
                                momentum=train.momentum)
    pruner.bind_optimizer(optimizer)
    step, rows = 0, []
    for epoch in range(train.epochs):
        model.train()
        pruner.begin_epoch(epoch)
        for idx in epoch_order(len(data.train.x), seed, epoch).split(train.batch_size):
            x, y = data.train.x[idx], data.train.y[idx]
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            pruner.after_backward(step)
            optimizer.step()
            pruner.after_step(step, lr_at(step))
            step += 1
        pruner.end_epoch(epoch)
        rows.append({"epoch": epoch + 1, "test_accuracy": accuracy(model, data.test), "sparsity": weight_sparsity(
            model, pruner.layers)})
    return rows


@torch.no_grad()
def accuracy(model: nn.Module, test) -> float:
    model.eval()
    return int((model(test.x).argmax(1) == test.y).sum()) / len(test.y)


def weight_sparsity(model: nn.Module, layers: list[str]) -> float:
    weights = [model.get_submodule(n).weight for n in layers]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/own-loop", help="run folder to write (report in OUT/report/)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="a setting as for `sparsepipe run --set` (e.g. freeze.latency_check=false)")
    args = p.parse_args(argv)

    settings = {**SETTINGS, "train": {"epochs": args.epochs},
                "gate": {"max_accuracy_drop": 0.05, "min_sparsity": args.sparsity - 0.05}}
    cfg = run_config(settings, args.set)
    data = load_data(cfg.data.name, seed=cfg.seed)  # the split `[data] name = "digits"` gives the CLI
    steps = math.ceil(len(data.train.x) / cfg.train.batch_size)
    models, histories, pruners = {}, {}, {}
    for variant, method, options in (("dense", "dense", {}), ("sparse", "lats", {"target_sparsity": args.sparsity})):
        torch.manual_seed(cfg.seed)
        model = MLP(data.input_shape, data.num_classes, cfg.model.hidden)
        lr_at = learning_rates(cfg.train.lr, cfg.train.epochs, steps, cfg.train.lr_schedule, cfg.train.warmup_epochs)
        pruner = pruners[variant] = attach_pruner(model, method, epochs=cfg.train.epochs, steps_per_epoch=steps,
                                                  lr=lr_at, **options)  # LATS's threshold follows lr_at
        histories[variant] = fit(model, pruner, data, cfg.train, cfg.seed)
        models[variant] = pruner.freeze()  # a plain nn.Module; pruned weights are exact zeros

    report = deploy_pruned(models["sparse"], models["dense"], args.out, cfg, pruner=pruners["sparse"],
                           histories=histories)
    print(f"{args.out}/report/report.json: sparsity {report.sparsity.global_:.1%}, accuracy dense "
          f"{report.dense.accuracy:.2%} sparse {report.sparse.accuracy:.2%}, gate {'passed' if report.gate.passed else 'FAILED'}")
    print(f"the same run through the CLI: sparsepipe run {args.out}/config.toml --out RUN")
    return 0 if report.gate.passed else 1


if __name__ == "__main__":
    sys.exit(main())
