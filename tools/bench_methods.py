"""Every pruning method at several global sparsities with one epoch budget, measured on exported ONNX.

Writes results/methods-MODEL/results.json (one row per run, written after every run so a stopped
benchmark keeps what it measured) and accuracy_vs_sparsity.png.

    .venv/bin/python tools/bench_methods.py --model lenet5 --data-root ../shared/data/mnist
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compress import atomic  # noqa: E402
from compress.data import load_data  # noqa: E402
from compress.models import ModelConfig, build_model  # noqa: E402
from compress.config.prune import PruneConfig  # noqa: E402
from compress.pruners import build_pruner  # noqa: E402
from compress.selection import select_layers  # noqa: E402
from compress.sparsity import global_sparsity  # noqa: E402
from compress.train import TrainConfig, train  # noqa: E402
from deploy.export import export_onnx  # noqa: E402
from deploy.report import save_png  # noqa: E402
from compress.flops import count_macs  # noqa: E402
from deploy.latency import make_session  # noqa: E402
from deploy.validate import onnx_logits  # noqa: E402

METHODS = ["magnitude", "magnitude-layer", "gmp", "l1", "greg1", "greg2", "lats", "str"]


def prune_config(method: str, sparsity: float) -> PruneConfig:
    """The config of `method` aimed at `sparsity` (target modes for the soft-threshold methods)."""
    cfg = PruneConfig(method={"magnitude-layer": "magnitude", "greg1": "greg", "greg2": "greg"}.get(method, method))
    if method.startswith("magnitude"):
        cfg.magnitude.sparsity = sparsity
        cfg.magnitude.scope = "layer" if method.endswith("layer") else "global"
    elif method == "gmp":
        cfg.gmp.sparsity = sparsity
    elif method == "l1":
        cfg.l1.sparsity, cfg.l1.prune_after = sparsity, cfg.greg.pick_after  # GReg-1's exact groups
    elif method.startswith("greg"):
        cfg.greg.sparsity, cfg.greg.variant = sparsity, int(method[-1])
    elif method == "lats":
        cfg.lats.target_sparsity = sparsity
    elif method == "str":
        cfg.str.target_sparsity = sparsity
    return cfg


def measure(model, data, folder: Path, name: str) -> dict:
    path = folder / f"{name}.onnx"
    export_onnx(model, data.test.x[:32], path)
    logits = onnx_logits(make_session(path), data.test.x.numpy(), 512)
    path.unlink()
    macs = count_macs(model, data.input_shape)
    return {"onnx_accuracy": float((logits.argmax(1) == data.test.y.numpy()).mean()),
            "macs_dense": macs["dense"], "macs_sparse": macs["sparse"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="lenet5")
    p.add_argument("--data", default="mnist")
    p.add_argument("--data-root", default="../shared/data/mnist")
    p.add_argument("--train-limit", type=int, default=0)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--sparsities", default="0.9,0.95,0.98")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    out = args.out or Path("results") / f"methods-{args.model}"
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(args.data, str(Path(args.data_root).resolve()), train_limit=args.train_limit)
    tcfg = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size)
    runs = [("dense", 0.0)] + [(m, float(s)) for s in args.sparsities.split(",") for m in args.methods.split(",")]
    meta = {"model": args.model, "data": args.data, "train_samples": len(data.train), "test_samples": len(data.test),
            "epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size, "torch": torch.__version__,
            "machine": f"{platform.machine()}, {torch.get_num_threads()} threads", "rows": []}
    for method, target in tqdm(runs, desc="runs"):
        torch.manual_seed(0)
        model = build_model(ModelConfig(name=args.model), data.input_shape, data.num_classes)
        cfg = prune_config(method, target) if method != "dense" else PruneConfig(method="dense")
        pruner = build_pruner(cfg)
        layers = select_layers(model, cfg.layers)
        t0 = time.perf_counter()
        history = train(model, pruner, data, tcfg, layers, progress=False)
        wall = time.perf_counter() - t0
        summary = pruner.summary()
        frozen = pruner.freeze()
        row = {"method": method, "target": target, "sparsity": global_sparsity(frozen, layers),
               "torch_accuracy": history[-1]["test_accuracy"], "train_seconds": wall,
               **measure(frozen, data, out, f"{method}-{target}"), "pruner": summary}
        meta["rows"].append(row)
        tqdm.write(f"{method:16s} target {target:.2f}: sparsity {row['sparsity']:.4f} "
                   f"acc {row['onnx_accuracy']:.4f} MACs x{row['macs_dense'] / max(row['macs_sparse'], 1):.1f}")
        atomic.write_json(out / "results.json", meta)
    plot(meta, out / "accuracy_vs_sparsity.png")
    return 0


def plot(meta: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    dense = [r for r in meta["rows"] if r["method"] == "dense"]
    if dense:
        ax.axhline(100 * dense[0]["onnx_accuracy"], color="grey", ls="--", label="dense")
    for method in dict.fromkeys(r["method"] for r in meta["rows"] if r["method"] != "dense"):
        rows = sorted((r for r in meta["rows"] if r["method"] == method), key=lambda r: r["sparsity"])
        ax.plot([100 * r["sparsity"] for r in rows], [100 * r["onnx_accuracy"] for r in rows], "o-", label=method)
    ax.set(xlabel="global sparsity (%)", ylabel="test accuracy, onnxruntime (%)",
           title=f"{meta['model']} on {meta['data']}, {meta['epochs']} epochs per run")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_png(fig, path, dpi=100)


if __name__ == "__main__":
    sys.exit(main())
