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
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from compress.api import attach_pruner, optimizer_groups  # noqa: E402
from compress.data import load_data  # noqa: E402
from compress.models import MLP  # noqa: E402
from deploy.api import deploy_pruned  # noqa: E402

HIDDEN = [128]


def cosine(base_lr: float, total_steps: int):
    """The learning rate of each step: cosine from base_lr to 0."""
    return lambda step: base_lr * 0.5 * (1 + math.cos(math.pi * step / total_steps))


def fit(model: nn.Module, pruner, loader: DataLoader, test, epochs: int, lr_at) -> list[dict]:
    """Your loop: SGD at the learning rates lr_at(step), the pruner's hooks, one metrics row per epoch."""
    optimizer = torch.optim.SGD(optimizer_groups(model, pruner, weight_decay=5e-4), lr=lr_at(0), momentum=0.9)
    pruner.bind_optimizer(optimizer)
    step, rows = 0, []
    for epoch in range(epochs):
        model.train()
        pruner.begin_epoch(epoch)
        for x, y in loader:
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
        rows.append({"epoch": epoch + 1, "test_accuracy": accuracy(model, test), "sparsity": weight_sparsity(
            model, pruner.layers)})
    return rows


@torch.no_grad()
def accuracy(model: nn.Module, test) -> float:
    model.eval()
    return float((model(test.x).argmax(1) == test.y).float().mean())


def weight_sparsity(model: nn.Module, layers: list[str]) -> float:
    weights = [model.get_submodule(n).weight for n in layers]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/own-loop", help="run folder to write (report in OUT/report/)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--sparsity", type=float, default=0.9)
    args = p.parse_args(argv)

    data = load_data("digits", seed=0)  # the same split as [data] name = "digits", seed = 0
    loader = DataLoader(TensorDataset(data.train.x, data.train.y), batch_size=64, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    models, histories, pruners = {}, {}, {}
    for variant, method, options in (("dense", "dense", {}), ("sparse", "lats", {"target_sparsity": args.sparsity})):
        torch.manual_seed(0)
        model = MLP(data.input_shape, data.num_classes, HIDDEN)
        lr_at = cosine(0.05, args.epochs * len(loader))  # LATS's threshold follows the learning rates used
        pruner = pruners[variant] = attach_pruner(model, method, epochs=args.epochs, steps_per_epoch=len(loader),
                                                  lr=lr_at, **options)
        histories[variant] = fit(model, pruner, loader, data.test, args.epochs, lr_at)
        models[variant] = pruner.freeze()  # a plain nn.Module; pruned weights are exact zeros

    report = deploy_pruned(models["sparse"], models["dense"], args.out, {
        "name": "own-loop", "data": {"name": "digits"}, "model": {"name": "mlp", "hidden": HIDDEN},
        "train": {"epochs": args.epochs}, "validate": {"runs": 50, "latency_batch_size": 1, "threads": 1},
        "gate": {"max_accuracy_drop": 0.05, "min_sparsity": args.sparsity - 0.05}}, pruner=pruners["sparse"],
        histories=histories)
    print(f"{args.out}/report/report.json: sparsity {report.sparsity.global_:.1%}, accuracy dense "
          f"{report.dense.accuracy:.2%} sparse {report.sparse.accuracy:.2%}, gate {'passed' if report.gate.passed else 'FAILED'}")
    return 0 if report.gate.passed else 1


if __name__ == "__main__":
    sys.exit(main())
