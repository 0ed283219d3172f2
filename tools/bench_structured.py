"""Channel pruning that makes models physically smaller: latency ratio next to the MAC ratio.

For each model and MAC-reduction factor, the `filter` method (one-shot L1, `flops_target`) cuts
channels during training on MNIST; the zero channels are then removed (exactly) and the dense and
pruned models are timed side by side in onnxruntime (interleaved, 1 thread), with their accuracy
on the 10,000 MNIST test images. Writes results/structured/results.json + latency_vs_macs.png.

    .venv/bin/python tools/bench_structured.py --models resnet20,resnet56,vgg16 --factors 2,3
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compress import atomic  # noqa: E402
from compress.data import load_data  # noqa: E402
from compress.models import ModelConfig, build_model  # noqa: E402
from compress.config.prune import PruneConfig  # noqa: E402
from compress.pruners import build_pruner  # noqa: E402
from compress.selection import select_layers  # noqa: E402
from compress.structured import channel_groups, harvest_channels  # noqa: E402
from compress.train import TrainConfig, train  # noqa: E402
from deploy.export import export_onnx  # noqa: E402
from compress.flops import count_macs  # noqa: E402
from deploy.latency import compare_latency, make_session  # noqa: E402
from deploy.report import save_png  # noqa: E402
from deploy.validate import onnx_logits  # noqa: E402


def train_and_cut(model_name: str, data, cfg: PruneConfig, epochs: int, lr: float):
    """Train with the configured pruner from seed 0, freeze, and cut the zero channels out.
    Returns (smaller model, pruner, seconds)."""
    torch.manual_seed(0)
    start = time.perf_counter()
    model = build_model(ModelConfig(name=model_name), data.input_shape, data.num_classes)
    pruner = build_pruner(cfg)
    train(model, pruner, data, TrainConfig(epochs=epochs, lr=lr, batch_size=128, weight_decay=1e-4),
          select_layers(model, cfg.layers), progress=False)
    model = pruner.freeze().eval()
    harvest_channels(model, channel_groups(model, torch.zeros(2, *data.input_shape)), data.input_shape)
    return model, pruner, time.perf_counter() - start


def widths(model: torch.nn.Module) -> list[int]:
    """Conv widths in order, repeats collapsed (ResNet-20: one per stage)."""
    out: list[int] = []
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d) and m.out_channels not in out[-1:]:
            out.append(m.out_channels)
    return out


def accuracy(session, data) -> float:
    x, y = data.test.x.numpy(), data.test.y.numpy()
    return float((onnx_logits(session, x, 256).argmax(1) == y).mean())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet20,resnet56,vgg16")
    p.add_argument("--data-root", default="../shared/data/mnist")
    p.add_argument("--train-limit", type=int, default=12000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--factors", default="2,3", help="MAC reduction factors (prune.filter.flops_target)")
    p.add_argument("--batches", default="1,32")
    p.add_argument("--round-to", type=int, default=8, help="keep channel counts a multiple of this")
    p.add_argument("--pow2", action="store_true", help="keep channel counts powers of two")
    p.add_argument("--seconds", type=float, default=4.0, help="timed seconds per model and batch size")
    p.add_argument("--out", type=Path, default=Path("results/structured"))
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    data = load_data("mnist", str(Path(args.data_root).resolve()), train_limit=args.train_limit)
    meta = {"data": "MNIST", "train_samples": len(data.train), "test_samples": len(data.test), "epochs": args.epochs,
            "threads": 1, "round_to": args.round_to, "pow2": args.pow2, "lr": args.lr, "machine": platform.platform(), "cpus": torch.get_num_threads(),
            "onnxruntime": ort.__version__, "torch": torch.__version__, "rows": []}
    jobs = [(m, float(f)) for m in args.models.split(",") for f in ["0", *args.factors.split(",")]]
    for model_name, factor in tqdm(jobs, desc="train + cut"):
        cfg = PruneConfig(method="filter" if factor else "dense")
        cfg.filter.flops_target, cfg.filter.round_to, cfg.filter.pow2 = factor, args.round_to, args.pow2
        model, pruner, seconds = train_and_cut(model_name, data, cfg, args.epochs, args.lr)
        name = f"{model_name}-x{factor:g}" if factor else f"{model_name}-dense"
        path = args.out / f"{name}.onnx"
        export_onnx(model, data.test.x[:32], path)
        meta["rows"].append({"model": model_name, "variant": name, "target": factor, "path": str(path),
                             "train_seconds": seconds, "macs": count_macs(model, data.input_shape)["dense"],
                             "params": sum(q.numel() for q in model.parameters()), "widths": widths(model)})
    rows = []
    for model_name in args.models.split(","):
        mine = [r for r in meta["rows"] if r["model"] == model_name]
        sessions = {r["variant"]: make_session(Path(r["path"]), threads=1) for r in mine}
        dense = mine[0]
        for r in mine:
            r["accuracy"] = accuracy(sessions[r["variant"]], data)
        for batch in [int(b) for b in args.batches.split(",")]:
            x = np.ascontiguousarray(data.test.x[:batch].numpy())
            lat = compare_latency(sessions, x, warmup=10, runs=30, seconds=args.seconds, warmup_seconds=0.5)
            for r in mine:
                row = {k: v for k, v in r.items() if k != "path"}
                row.update(batch=batch, macs_ratio=r["macs"] / dense["macs"], p50_ms=lat[r["variant"]]["p50_ms"],
                           latency_ratio=lat[r["variant"]]["p50_ms"] / lat[dense["variant"]]["p50_ms"])
                row["within_15pct"] = abs(row["latency_ratio"] - row["macs_ratio"]) <= 0.15 * row["macs_ratio"]
                rows.append(row)
                tqdm.write(f"{row['variant']:16s} b{batch:<3} acc {row['accuracy']:.4f} MACs x{row['macs_ratio']:.3f} "
                           f"latency x{row['latency_ratio']:.3f} ({row['p50_ms']:.3f} ms)")
    for r in meta["rows"]:
        Path(r["path"]).unlink()
    meta["rows"] = rows
    atomic.write_json(args.out / "results.json", meta)
    plot(meta, args.out / "latency_vs_macs.png")
    return 0


def plot(meta: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    markers = dict(zip(sorted({r["model"] for r in meta["rows"]}), "os^Dv"))
    for batch, color in zip(sorted({r["batch"] for r in meta["rows"]}), ("tab:blue", "tab:orange", "tab:green")):
        for model, marker in markers.items():
            rows = [r for r in meta["rows"] if r["batch"] == batch and r["model"] == model and r["target"]]
            ax.plot([r["macs_ratio"] for r in rows], [r["latency_ratio"] for r in rows], marker, color=color,
                    label=f"{model} b{batch}")
    xs = np.linspace(0, 1, 50)
    ax.plot(xs, xs, "--", color="grey", label="latency = MACs")
    ax.fill_between(xs, 0.85 * xs, 1.15 * xs, color="grey", alpha=0.15, label="±15% of MACs")
    ax.set(xlabel="MACs / dense", ylabel="latency / dense (p50, onnxruntime, 1 thread)",
           title="Channels removed (MNIST-trained; %s)" % (
               "power-of-two widths" if meta.get("pow2") else f"round_to {meta['round_to']}"), xlim=(0, 1.05), ylim=(0, 1.2))
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_png(fig, path)


if __name__ == "__main__":
    sys.exit(main())
