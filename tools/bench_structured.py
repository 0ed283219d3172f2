"""Channel pruning that makes models physically smaller: latency ratio next to the MAC ratio.

For each ratio, the `filter` method cuts that fraction of every prunable channel group during
training; the zero channels are then removed (exactly) and dense and pruned models are timed side
by side in onnxruntime (interleaved, 1 thread). Writes results/structured/results.json + PNG.

    .venv/bin/python tools/bench_structured.py --model resnet20 --data-root ../shared/data/mnist
"""
from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compress import atomic  # noqa: E402
from compress.data import load_data  # noqa: E402
from compress.models import ModelConfig, build_model  # noqa: E402
from compress.pruners import PruneConfig, build_pruner  # noqa: E402
from compress.selection import select_layers  # noqa: E402
from compress.structured import channel_groups, harvest_zero_channels  # noqa: E402
from compress.train import TrainConfig, train  # noqa: E402
from deploy.export import export_onnx  # noqa: E402
from deploy.flops import count_macs  # noqa: E402
from deploy.latency import compare_latency, make_session  # noqa: E402
from deploy.report import save_png  # noqa: E402
from deploy.validate import onnx_logits  # noqa: E402


def trained(model_name: str, data, ratio: float, args) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=model_name), data.input_shape, data.num_classes)
    cfg = PruneConfig(method="filter" if ratio else "dense")
    cfg.filter.ratio = ratio or 0.5
    cfg.filter.round_to = args.round_to
    pruner = build_pruner(cfg)
    train(model, pruner, data, TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=128, weight_decay=1e-4),
          select_layers(model, cfg.layers), progress=False)
    model = pruner.freeze().eval()
    harvest_zero_channels(model, channel_groups(model, torch.zeros(2, *data.input_shape)))
    return model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--data-root", default="../shared/data/mnist")
    p.add_argument("--train-limit", type=int, default=12000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--ratios", default="0.3,0.45")
    p.add_argument("--batches", default="1,32")
    p.add_argument("--round-to", type=int, default=1, help="keep channel counts a multiple of this")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--out", type=Path, default=Path("results/structured"))
    args = p.parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    data = load_data("mnist", str(Path(args.data_root).resolve()), train_limit=args.train_limit)
    x_all, y_all = data.test.x.numpy(), data.test.y.numpy()
    meta = {"model": args.model, "train_samples": len(data.train), "epochs": args.epochs, "threads": 1,
            "round_to": args.round_to,
            "machine": platform.platform(), "onnxruntime": ort.__version__, "rows": []}
    models = {"dense": trained(args.model, data, 0.0, args)}
    for ratio in tqdm([float(r) for r in args.ratios.split(",")], desc="ratios"):
        models[f"filter-{ratio}"] = trained(args.model, data, ratio, args)
    paths = {}
    for name, model in models.items():
        paths[name] = out / f"{args.model}-{name}.onnx"
        export_onnx(model, data.test.x[:32], paths[name])
    sessions = {n: make_session(p, threads=1) for n, p in paths.items()}
    macs = {n: count_macs(m, data.input_shape)["dense"] for n, m in models.items()}
    params = {n: sum(p.numel() for p in m.parameters()) for n, m in models.items()}
    acc = {n: float((onnx_logits(sessions[n], x_all, 256).argmax(1) == y_all).mean()) for n in models}
    for batch in [int(b) for b in args.batches.split(",")]:
        lat = compare_latency(sessions, np.ascontiguousarray(x_all[:batch]), warmup=10, runs=30,
                              seconds=args.seconds, warmup_seconds=0.5)
        for n in models:
            meta["rows"].append({"model": n, "batch": batch, "accuracy": acc[n], "macs": macs[n], "params": params[n],
                                 "macs_ratio": macs[n] / macs["dense"], "p50_ms": lat[n]["p50_ms"],
                                 "latency_ratio": lat[n]["p50_ms"] / lat["dense"]["p50_ms"]})
            r = meta["rows"][-1]
            tqdm.write(f"{n:12s} b{batch:<3} acc {acc[n]:.4f} MACs x{r['macs_ratio']:.2f} "
                       f"latency x{r['latency_ratio']:.2f} ({r['p50_ms']:.3f} ms)")
    atomic.write_json(out / "results.json", meta)
    for pth in paths.values():
        pth.unlink()
    plot(meta, out / "latency_vs_macs.png")
    return 0


def plot(meta: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for batch in sorted({r["batch"] for r in meta["rows"]}):
        rows = [r for r in meta["rows"] if r["batch"] == batch]
        ax.plot([r["macs_ratio"] for r in rows], [r["latency_ratio"] for r in rows], "o", label=f"batch {batch}")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="latency = MACs")
    ax.set(xlabel="MACs / dense", ylabel="latency / dense (p50, onnxruntime, 1 thread)",
           title=f"{meta['model']}: channels removed", xlim=(0, 1.05), ylim=(0, 1.2))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_png(fig, path)


if __name__ == "__main__":
    sys.exit(main())
