"""Channel cuts aimed at measured latency vs aimed at MACs: `latency_target` 2 and 3 against
`flops_target` 2 and 3, each model's widths found as the pipeline finds them, then every cut model
timed again side by side with its dense model in onnxruntime (1 thread) at batch 1 and 32.
Optionally (--train) accuracy after pruning and fine-tuning on MNIST with those widths.

Writes results/latency-target/results.json and latency_target.png.

    .venv/bin/python tools/bench_latency_target.py
    .venv/bin/python tools/bench_latency_target.py --models resnet20 --train --out results/latency-target-train
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_structured import accuracy  # noqa: E402
from compress import atomic  # noqa: E402
from compress.config.prune import PruneConfig  # noqa: E402
from compress.pruners.filters import FilterOptions  # noqa: E402
from compress.config.train import TrainConfig  # noqa: E402
from compress.data import load_data  # noqa: E402
from compress.flops import count_macs  # noqa: E402
from compress.models import ModelConfig, build_model  # noqa: E402
from compress.pruners import build_pruner  # noqa: E402
from compress.selection import select_layers  # noqa: E402
from compress.structured import channel_groups, harvest_channels, keep_counts, ratio_for_macs, widths_for_latency  # noqa: E402
from compress.structured.budget import cut_copy  # noqa: E402
from compress.train import train  # noqa: E402
from deploy.cut_check import cut_speedup, latency_ratio_measure  # noqa: E402
from deploy.export import export_onnx  # noqa: E402
from deploy.latency import make_session  # noqa: E402

MODELS = ["resnet20", "resnet56", "vgg16", "torchvision:resnet18", "torchvision:mobilenet_v2"]
SHAPE = (1, 28, 28)  # MNIST-sized inputs ("small inputs" for the torchvision models)


def find_widths(model, groups, kind: str, factor: float, batch: int) -> dict:
    """{"keep", "ratio", "latency_ratio" (measured in the search, None for MACs), ...} for a target."""
    if kind == "flops":
        rounding = FilterOptions().rounding()  # the pipeline's default for flops_target: multiples of 8
        ratio = ratio_for_macs(model, groups, SHAPE, factor, rounding)[0]
        return {"keep": keep_counts(groups, ratio, rounding), "ratio": ratio, "latency_ratio": None,
                "round_to": rounding,
                "pow2": False, "probes": [], "refined": []}
    measure = latency_ratio_measure(torch.randn(max(batch, 2), *SHAPE), batch, threads=1,
                                    runs=100 if batch == 1 else 20)
    return widths_for_latency(model, groups, factor, measure)


def train_with_widths(name: str, data, found: dict, epochs: int) -> float:
    """Accuracy in onnxruntime after training `name` with `filter` cutting to the widths found (at 30%)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name), data.input_shape, data.num_classes)
    cfg = PruneConfig(method="filter", options={"filter": FilterOptions(
        ratio=found["ratio"], round_to=found["round_to"], pow2=found["pow2"], prune_after=0.3)})
    pruner = build_pruner(cfg)
    train(model, pruner, data, TrainConfig(epochs=epochs, lr=0.1, batch_size=128, weight_decay=1e-4),
          select_layers(model, cfg.layers), progress=False)
    model = pruner.freeze().eval()
    harvest_channels(model, channel_groups(model, torch.zeros(2, *data.input_shape)), data.input_shape)
    path = Path("/tmp") / f"bench-latency-{name}.onnx"
    export_onnx(model, data.test.x[:8], path)
    acc = accuracy(make_session(path), data)
    path.unlink()
    return acc


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--targets", default="2,3")
    p.add_argument("--batches", default="1,32")
    p.add_argument("--train", action="store_true", help="also train each cut on MNIST and report accuracy")
    p.add_argument("--train-limit", type=int, default=6000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--data-root", default="../shared/data/mnist")
    p.add_argument("--kinds", default="latency,flops", help="which targets to run; rows of the others already in "
                                                            "the results file are kept")
    p.add_argument("--out", type=Path, default=Path("results/latency-target"))
    args = p.parse_args(argv)
    kinds = args.kinds.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    batches = [int(b) for b in args.batches.split(",")]
    data = load_data("mnist", str(Path(args.data_root).resolve()), train_limit=args.train_limit) if args.train else None
    meta = {"machine": platform.platform(), "torch": torch.__version__, "threads": 1, "input": list(SHAPE),
            "batches": batches, "rows": []}
    old = args.out / "results.json"
    if old.exists() and set(kinds) != {"latency", "flops"}:
        meta["rows"] = [r for r in json.loads(old.read_text())["rows"] if r["target"].split("_")[0] not in kinds]
    jobs = [(m, kind, float(t), b) for m in args.models.split(",") for t in args.targets.split(",")
            for kind in kinds for b in (batches if kind == "latency" else batches[:1])]
    for name, kind, factor, batch in tqdm(jobs, desc="cuts"):
        torch.manual_seed(0)
        model = build_model(ModelConfig(name=name), SHAPE, 10).eval()
        groups = [g for g in channel_groups(model, torch.zeros(2, *SHAPE)) if g.prunable]
        start = time.perf_counter()
        found = find_widths(model, groups, kind, factor, batch)
        search_s = time.perf_counter() - start
        ratio, during = found["ratio"], found["latency_ratio"]
        cut = cut_copy(model, groups, found["keep"]).eval()
        macs = count_macs(cut, SHAPE)["dense"] / count_macs(model, SHAPE)["dense"]
        row = {"model": name, "target": f"{kind}_target", "factor": factor, "searched_at_batch": batch if kind == "latency" else None,
               "ratio": ratio, "round_to": found["round_to"], "pow2": found["pow2"], "macs_ratio": macs,
               "search_seconds": search_s, "latency_ratio_in_search": during, "probes": len(found["probes"]),
               "groups_refined": len(found.get("refined", []))}
        for b in batches:
            timing = cut_speedup(model, cut, torch.randn(max(b, 2), *SHAPE), b, 1, runs=300 if b == 1 else 40)
            row[f"latency_ratio_b{b}"] = timing["ratio"]
            row[f"dense_ms_b{b}"] = timing["before_ms"]
        goal = 1 / factor
        if kind == "latency":
            row["within_10pct"] = abs(row[f"latency_ratio_b{batch}"] - goal) <= 0.1 * goal
        if data is not None:
            row["accuracy"] = train_with_widths(name, data, found, args.epochs)
        meta["rows"].append(row)
        tqdm.write(f"{name} {kind} {factor:g}x (b{batch}): ratio {ratio:.3f} MACs x{macs:.2f} " +
                   " ".join(f"b{b} x{row[f'latency_ratio_b{b}']:.2f}" for b in batches) +
                   (f" acc {row['accuracy']:.4f}" if "accuracy" in row else ""))
        atomic.write_json(args.out / "results.json", meta)
    if data is not None:
        meta["dense_accuracy"] = {m: train_with_widths(m, data, {"ratio": 0.0, "round_to": 1, "pow2": False},
                                                       args.epochs) for m in args.models.split(",")}
        atomic.write_json(args.out / "results.json", meta)
    plot(meta, args.out / "latency_target.png")
    return 0


def plot(meta: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from deploy.report import save_png

    rows = meta["rows"]
    fig, axes = plt.subplots(1, len(meta["batches"]), figsize=(7 * len(meta["batches"]), 4.5), squeeze=False)
    for ax, b in zip(axes[0], meta["batches"]):
        picked = [r for r in rows if r["searched_at_batch"] in (None, b)]
        labels = [f"{r['model'].replace('torchvision:', 'tv:')}\n{r['target'][:3]} {r['factor']:g}x" for r in picked]
        ax.bar(range(len(picked)), [r[f"latency_ratio_b{b}"] for r in picked],
               color=["C0" if r["target"] == "latency_target" else "C1" for r in picked])
        for i, r in enumerate(picked):
            ax.plot([i - 0.4, i + 0.4], [1 / r["factor"]] * 2, "k-", lw=1)
        ax.set_xticks(range(len(picked)), labels, fontsize=6, rotation=90)
        ax.set(ylabel="measured latency / dense", title=f"batch {b}, 1 thread (black: 1/target; blue: latency_target, "
                                                         "orange: flops_target)")
        ax.title.set_fontsize(8)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    save_png(fig, path, dpi=100)


if __name__ == "__main__":
    sys.exit(main())
