"""Movement pruning beside GMP and LATS, fine-tuning the same pretrained model (MNIST).

A dense model (LeNet-5, and ResNet-20 on a class-stratified subset of MNIST so that it fits a 2-core
machine) is trained once and saved; every method then fine-tunes a copy of it to each target
sparsity for a few epochs, over several seeds (the seed sets the batch order of the fine-tuning).
Test accuracy on MNIST's test images, the sparsity reached and wall time, side by side; mean and
spread over the seeds in results/movement/results.json and a plot in results/movement/movement.png.

    OMP_NUM_THREADS=1 .venv/bin/python tools/bench_movement.py --mnist ../shared/data/mnist

An interrupted run resumes: rows already in results.json (same seeds and epochs) are kept. One thread:
on a machine shared with other jobs, torch's spinning OpenMP threads ran 14x slower (122 s vs 9 s for an
epoch of LeNet-5 here with two other processes on the 2 cores).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from compress import atomic  # noqa: E402
from compress.config.prune import PruneConfig  # noqa: E402
from compress.config.train import TrainConfig  # noqa: E402
from compress.data import load_data  # noqa: E402
from compress.models import ModelConfig, build_model  # noqa: E402
from compress.pruners import Pruner, build_pruner, option_classes  # noqa: E402
from compress.selection import select_layers  # noqa: E402
from compress.sparsity import global_sparsity  # noqa: E402
from compress.train import evaluate, train  # noqa: E402

# each method's options when it starts from trained weights: the schedule starts at once
METHODS = {
    "movement-hard": ("movement", {"variant": "hard", "start": 0.0, "end": 0.7}),
    "movement-soft": ("movement", {"variant": "soft", "start": 0.0, "end": 0.7}),
    "gmp": ("gmp", {"start": 0.0, "end": 0.7}),
    "lats": ("lats", {}),
}


def prune_config(name: str, sparsity: float, frequency: int | None = None) -> PruneConfig:
    """The method's options at `sparsity`; `frequency` (steps between mask updates) where it has one."""
    method, options = METHODS[name]
    cls = option_classes()[method]
    goal = next(f.name for f in dataclasses.fields(cls) if f.metadata.get("sparsity_goal"))
    if frequency is not None and "frequency" in {f.name for f in dataclasses.fields(cls)}:
        options = {**options, "frequency": frequency}
    table = cls(**options, **{goal: sparsity})
    return PruneConfig(method=method, options={method: table})


def fit(model_name: str, data, prune: PruneConfig | None, epochs: int, lr: float, seed: int,
        weights: dict | None, batch_size: int = 128) -> dict:
    torch.manual_seed(seed)
    model = build_model(ModelConfig(name=model_name), data.input_shape, data.num_classes)
    if weights is not None:
        model.load_state_dict(weights)
    layers = select_layers(model, PruneConfig().layers)
    pruner = build_pruner(prune) if prune else Pruner()
    t0 = time.perf_counter()
    train(model, pruner, data, TrainConfig(epochs=epochs, finetune_epochs=1 if prune else 0, batch_size=batch_size, lr=lr),
          layers, seed=seed, progress=False)
    seconds = time.perf_counter() - t0
    frozen = pruner.freeze().eval()
    return {"accuracy": evaluate(frozen, data.test)[0], "sparsity": global_sparsity(frozen, layers),
            "seconds": seconds, "state": frozen.state_dict()}


def pretrained(model_name: str, data, epochs: int, out: Path) -> tuple[dict, dict]:
    """The dense model every method starts from: trained once, then read back from out/."""
    path = out / f"{model_name}-dense.safetensors"
    if path.exists():
        weights = load_file(str(path))
        model = build_model(ModelConfig(name=model_name), data.input_shape, data.num_classes)
        model.load_state_dict(weights)
        return weights, {"accuracy": evaluate(model, data.test)[0], "seconds": None, "epochs": epochs}
    dense = fit(model_name, data, None, epochs, 0.05, 0, None)
    weights = dense.pop("state")
    out.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(path))
    return weights, {**dense, "epochs": epochs}


def summarize(runs: list[dict]) -> dict:
    acc = [r["accuracy"] for r in runs]
    return {"accuracy_mean": statistics.mean(acc), "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
            "sparsity_mean": statistics.mean(r["sparsity"] for r in runs),
            "seconds_mean": statistics.mean(r["seconds"] for r in runs), "runs": runs}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from deploy.report import save_png

    models = list(results["models"])
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 3.8), squeeze=False)
    for ax, name in zip(axes[0], models):
        block = results["models"][name]
        for method in block["methods"]:
            rows = block["methods"][method]
            xs = [100 * float(t) for t in rows]
            ax.errorbar(xs, [100 * r["accuracy_mean"] for r in rows.values()],
                        yerr=[100 * r["accuracy_std"] for r in rows.values()], marker="o", capsize=3, label=method)
        ax.axhline(100 * block["dense"]["accuracy"], color="k", lw=1, ls="--", label="dense")
        ax.set(title=f"{name}, MNIST, from a trained model", xlabel="target sparsity (%)", ylabel="test accuracy (%)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mnist", type=Path, default=ROOT.parent / "shared" / "data" / "mnist")
    p.add_argument("--models", default="lenet5,resnet20")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--sparsities", default="0.9,0.95,0.99")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--dense-epochs", type=int, default=8)
    p.add_argument("--finetune-epochs", type=int, default=4)
    p.add_argument("--resnet-train-limit", type=int, default=3000,
                   help="ResNet-20 trains on this many MNIST images (class-stratified; 0: all 60,000)")
    p.add_argument("--batch-size", type=int, default=128, help="fine-tuning batch size (more, smaller steps "
                   "give the scores of movement pruning more updates to accumulate)")
    p.add_argument("--frequency", type=int, default=None,
                   help="steps between mask updates for movement and gmp (default: each method's own)")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "movement")
    args = p.parse_args(argv)
    out_file = args.out / "results.json"
    results = {"machine": platform.platform(), "threads": torch.get_num_threads(), "seeds": args.seeds,
               "dense_epochs": args.dense_epochs, "finetune_epochs": args.finetune_epochs,
               "batch_size": args.batch_size, "frequency": args.frequency, "models": {}}
    if out_file.exists():  # an interrupted run with the same settings: keep its rows, measure the rest
        earlier = json.loads(out_file.read_text())
        defaults = {"batch_size": 128, "frequency": None}  # what runs before these flags used
        if all(earlier.get(k, defaults.get(k)) == results[k]
               for k in ("seeds", "dense_epochs", "finetune_epochs", "batch_size", "frequency")):
            results["models"] = earlier["models"]
    methods, targets = args.methods.split(","), args.sparsities.split(",")
    for model_name in args.models.split(","):
        limit = args.resnet_train_limit if model_name.startswith("resnet") else 0
        data = load_data("mnist", str(args.mnist.resolve()), train_limit=limit)
        weights, dense = pretrained(model_name, data, args.dense_epochs, args.out)
        dense.pop("state", None)
        block = results["models"].setdefault(model_name, {"methods": {}})
        block.update(train_images=len(data.train), dense=dense)
        print(f"{model_name}: dense {100 * dense['accuracy']:.2f}% on {len(data.test)} test images", flush=True)
        bar = tqdm(total=len(methods) * len(targets) * args.seeds, desc=model_name)
        for method in methods:
            for target in targets:
                if target in block["methods"].get(method, {}):
                    bar.update(args.seeds)
                    continue
                runs = []
                for seed in range(args.seeds):
                    res = fit(model_name, data, prune_config(method, float(target), args.frequency),
                              args.finetune_epochs, 0.01, seed, weights, args.batch_size)
                    res.pop("state")
                    runs.append(res)
                    bar.update()
                row = block["methods"].setdefault(method, {})[target] = summarize(runs)
                tqdm.write(f"{model_name} {method} {target}: {100 * row['accuracy_mean']:.2f} ± "
                           f"{100 * row['accuracy_std']:.2f}% at {100 * row['sparsity_mean']:.2f}% "
                           f"({row['seconds_mean']:.0f} s per run)")
                atomic.write_json(out_file, results)
        bar.close()
    plot(results, args.out / "movement.png")


if __name__ == "__main__":
    main()
