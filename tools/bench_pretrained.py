"""Pruning from a trained model vs from scratch (MNIST, LeNet-5): LATS, GMP and one-shot magnitude at
95% and 99%, each (a) fine-tuned for a few epochs from a dense LeNet-5 trained and saved first, and
(b) trained from scratch with the pretraining's budget. Accuracy on the 10,000 test images, sparsity
and wall time, side by side.

    .venv/bin/python tools/bench_pretrained.py --mnist ../shared/data/mnist
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from compress import atomic  # noqa: E402
from compress.config.prune import PruneConfig  # noqa: E402
from compress.pruners.gmp import GMPOptions  # noqa: E402
from compress.pruners.lats import LATSOptions  # noqa: E402
from compress.pruners.magnitude import MagnitudeOptions  # noqa: E402
from compress.config.train import TrainConfig  # noqa: E402
from compress.data import load_data  # noqa: E402
from compress.models import LeNet5  # noqa: E402
from compress.pruners import Pruner, build_pruner  # noqa: E402
from compress.selection import select_layers  # noqa: E402
from compress.sparsity import global_sparsity  # noqa: E402
from compress.train import evaluate, train  # noqa: E402


def prune_config(method: str, sparsity: float, pretrained: bool) -> PruneConfig:
    """The method at `sparsity`; from trained weights the schedule starts at once (no dense warm-up)."""
    if method == "lats":
        options = LATSOptions(target_sparsity=sparsity)
    elif method == "gmp":
        options = GMPOptions(sparsity=sparsity, start=0.0 if pretrained else 0.1, end=0.6 if pretrained else 0.7)
    else:
        method, options = "magnitude", MagnitudeOptions(sparsity=sparsity, prune_after=0.0 if pretrained else 0.5)
    return PruneConfig(method=method, options={method: options})


def run(data, prune: PruneConfig | None, epochs: int, weights: dict | None, finetune: int = 0) -> dict:
    torch.manual_seed(0)
    model = LeNet5(data.input_shape, data.num_classes)
    if weights is not None:
        model.load_state_dict(weights)
    layers = select_layers(model, PruneConfig().layers)
    pruner = build_pruner(prune) if prune else Pruner()
    t0 = time.perf_counter()
    train(model, pruner, data, TrainConfig(epochs=epochs, finetune_epochs=finetune, batch_size=128, lr=0.05 if
                                           weights is None else 0.01), layers, progress=False)
    seconds = time.perf_counter() - t0
    frozen = pruner.freeze().eval()
    accuracy, _ = evaluate(frozen, data.test)
    return {"accuracy": accuracy, "sparsity": global_sparsity(frozen, layers), "seconds": seconds,
            "epochs": epochs, "state": frozen.state_dict()}


def plot(rows: list[dict], dense: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from deploy.report import save_png

    fig, ax = plt.subplots(figsize=(8, 4))
    labels = [f"{r['method']}\n{100 * r['target']:.0f}%" for r in rows]
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [100 * r["pretrained"]["accuracy"] for r in rows], 0.4, label="from the trained model")
    ax.bar([x + 0.2 for x in xs], [100 * r["scratch"]["accuracy"] for r in rows], 0.4, label="from scratch")
    ax.axhline(100 * dense, color="k", lw=1, ls="--", label=f"dense baseline {100 * dense:.2f}%")
    ax.set_xticks(list(xs), labels)
    ax.set(ylabel="test accuracy (%)", ylim=(90, 100), title="LeNet-5, MNIST")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mnist", type=Path, default=ROOT.parent / "shared" / "data" / "mnist")
    p.add_argument("--dense-epochs", type=int, default=15)
    p.add_argument("--finetune-epochs", type=int, default=4)
    p.add_argument("--methods", default="lats,gmp,magnitude")
    p.add_argument("--sparsities", default="0.95,0.99")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "pretrained")
    args = p.parse_args()
    data = load_data("mnist", str(args.mnist.resolve()))
    weights_file = args.out / "lenet5-dense.safetensors"
    if weights_file.exists():
        weights = load_file(str(weights_file))
        dense = {"accuracy": evaluate(_loaded(data, weights), data.test)[0], "seconds": None}
    else:
        dense = run(data, None, args.dense_epochs, None)
        weights = dense.pop("state")
        args.out.mkdir(parents=True, exist_ok=True)
        save_file(weights, str(weights_file))
    print(f"dense LeNet-5: {100 * dense['accuracy']:.2f}% ({dense['seconds']} s)")
    out = {"machine": platform.platform(), "threads": torch.get_num_threads(), "dense": dense,
           "dense_epochs": args.dense_epochs, "finetune_epochs": args.finetune_epochs, "rows": []}
    for method in args.methods.split(","):
        for target in map(float, args.sparsities.split(",")):
            row = {"method": method, "target": target}
            for kind in ("pretrained", "scratch"):
                pre = kind == "pretrained"
                res = run(data, prune_config(method, target, pre), args.finetune_epochs if pre else args.dense_epochs,
                          weights if pre else None, finetune=1 if pre else 0)
                res.pop("state")
                row[kind] = res
            out["rows"].append(row)
            print(f"{method} {target:.2f}: from trained {100 * row['pretrained']['accuracy']:.2f}% at "
                  f"{100 * row['pretrained']['sparsity']:.2f}% in {row['pretrained']['seconds']:.0f} s; from scratch "
                  f"{100 * row['scratch']['accuracy']:.2f}% at {100 * row['scratch']['sparsity']:.2f}% in "
                  f"{row['scratch']['seconds']:.0f} s", flush=True)
            atomic.write_json(args.out / "results.json", out)
    plot(out["rows"], dense["accuracy"], args.out / "pretrained.png")


def _loaded(data, weights):
    model = LeNet5(data.input_shape, data.num_classes)
    model.load_state_dict(weights)
    return model


if __name__ == "__main__":
    main()
