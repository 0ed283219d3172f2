"""What each pruner's hooks cost per training step: LeNet-5 on MNIST, 1 thread, the same batches,
repetitions of 60 steps each, the methods taking turns within each repetition so that a slow spell
of the machine hits all of them alike; the ratio to a dense step (no pruner) is taken within each
repetition, and its median reported. JSON.

    .venv/bin/python tools/bench_hooks.py --mnist ../shared/data/mnist
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from compress import atomic  # noqa: E402
from compress.config.prune import PruneConfig  # noqa: E402
from compress.data import load_data  # noqa: E402
from compress.models import LeNet5  # noqa: E402
from compress.pruners import Pruner, TrainPlan, build_pruner  # noqa: E402
from compress.selection import select_layers  # noqa: E402

METHODS = ["dense", "lats", "str", "gmp", "greg", "magnitude"]


def step_time(method: str, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    """Seconds per training step with `method`'s hooks, over `steps` steps (after 10 warm-up steps)."""
    torch.manual_seed(0)
    model = LeNet5((1, 28, 28), 10)
    layers = select_layers(model, PruneConfig().layers)
    pruner = Pruner() if method == "dense" else build_pruner(PruneConfig(method=method))
    total = steps + 10
    pruner.attach(model, layers, TrainPlan(2, total // 2 + 1, lambda s: 0.05, (1, 28, 28)))
    own = pruner.param_groups()
    taken = {id(q) for g in own for q in g["params"]}
    rest = [q for q in model.parameters() if q.requires_grad and id(q) not in taken]
    own = [{**g, "weight_decay": 5e-4 if g.get("weight_decay") is None else g["weight_decay"]} for g in own]
    optimizer = torch.optim.SGD([{"params": rest}, *own], lr=0.05, momentum=0.9)
    pruner.bind_optimizer(optimizer)
    loss_fn = torch.nn.CrossEntropyLoss()
    pruner.begin_epoch(1)  # past the dense warm-up of one-shot methods: masks exist
    for step in range(total):
        if step == 10:
            t0 = time.perf_counter()
        i = (step * 64) % (len(x) - 64)
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x[i:i + 64]), y[i:i + 64]).backward()
        pruner.after_backward(step)
        optimizer.step()
        pruner.after_step(step, 0.05)
    return (time.perf_counter() - t0) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mnist", type=Path, default=ROOT.parent / "shared" / "data" / "mnist")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "hooks")
    args = p.parse_args()
    torch.set_num_threads(1)
    data = load_data("mnist", str(args.mnist.resolve()), train_limit=6400)
    x, y = data.train.x, data.train.y
    runs: dict[str, list[float]] = {m: [] for m in METHODS}
    for _ in range(args.repeats):
        for m in METHODS:
            runs[m].append(step_time(m, x, y, args.steps))
    times = {m: statistics.median(runs[m]) for m in METHODS}
    # each repetition's ratio against the dense run beside it, then the median: the machine's slow
    # and fast spells (±5% here between minutes) cancel within a repetition
    ratios = {m: statistics.median(t / d for t, d in zip(runs[m], runs["dense"])) for m in METHODS}
    for m in METHODS:
        print(f"{m:10s} {1000 * times[m]:.2f} ms/step  x{ratios[m]:.3f}")
    atomic.write_json(args.out / "results.json", {"machine": platform.platform(), "threads": 1, "batch": 64,
                                                  "repeats": args.repeats, "steps": args.steps,
                                                  "ms_per_step": {m: 1000 * t for m, t in times.items()},
                                                  "ratio_vs_dense": ratios})


if __name__ == "__main__":
    main()
