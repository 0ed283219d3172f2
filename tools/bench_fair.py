"""The seed papers' claims, tested under their own protocols with several seeds (MNIST).

Two experiments, each writing results/fair-NAME/results.json (every run as it finishes, so a
stopped benchmark keeps what it measured), summary.md (mean ± std per cell) and a PNG:

- `sparse`: LATS vs STR vs GMP vs one-shot magnitude, all from scratch with the same epochs, at
  high sparsities where the papers report differences. Each method trains with its own paper's
  weight decay (LATS 3.05e-5, STR 2.25e-5; GMP and magnitude 5e-4, Caffe's LeNet setting that
  Han et al. used); LATS and STR in target mode.
- `greg`: GReg-1 and GReg-2 vs one-shot L1 removing the same number of groups, all starting from
  the same trained dense model (one per seed); GReg gets its penalty phase (and a stabilisation
  epoch) on top, then every method gets the same fine-tuning epochs.

    .venv/bin/python tools/bench_fair.py sparse --seeds 0,1,2
    .venv/bin/python tools/bench_fair.py greg --seeds 0,1,2
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
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
from compress.config.train import TrainConfig  # noqa: E402
from compress.data import load_data  # noqa: E402
from compress.models import ModelConfig, build_model  # noqa: E402
from compress.pruners import Pruner, build_pruner  # noqa: E402
from compress.selection import select_layers  # noqa: E402
from compress.sparsity import global_sparsity  # noqa: E402
from compress.structured import channel_groups, harvest_channels, ratio_for_macs  # noqa: E402
from compress.flops import count_macs  # noqa: E402
from compress.train import train  # noqa: E402
from deploy.export import export_onnx  # noqa: E402
from deploy.latency import make_session  # noqa: E402

MODELS = {"lenet5": ModelConfig(name="lenet5"), "lenet5_caffe": ModelConfig(name="lenet5_caffe"),
          "lenet300": ModelConfig(name="mlp", hidden=[300, 100]),
          "resnet20": ModelConfig(name="resnet20")}
WEIGHT_DECAY = {"lats": 3.0517578125e-5, "str": 2.251757813e-5, "gmp": 5e-4, "magnitude": 5e-4,
                "dense": 5e-4, "greg1": 5e-4, "greg2": 5e-4, "l1": 5e-4}


def sparse_config(method: str, sparsity: float) -> PruneConfig:
    cfg = PruneConfig(method=method)
    if method in ("lats", "str"):
        getattr(cfg, method).target_sparsity = sparsity
    else:
        getattr(cfg, method).sparsity = sparsity
    return cfg


def greg_config(method: str, sparsity: float, penalty_epochs: int, finetune_epochs: int,
                stabilize_steps: int, granularity: str = "weight") -> tuple[PruneConfig, int]:
    """(config, epochs): L1 cuts at step 0 and fine-tunes; GReg regularises first, then the same fine-tuning.
    `sparsity` is the fraction of groups (weights, or channels of every channel group) removed."""
    if method == "l1":
        cfg = PruneConfig(method="l1")
        cfg.l1.sparsity, cfg.l1.prune_after, cfg.l1.granularity = sparsity, 0.0, granularity
        return cfg, finetune_epochs
    cfg = PruneConfig(method="greg")
    cfg.greg.granularity = granularity
    epochs = penalty_epochs + finetune_epochs
    cfg.greg.variant, cfg.greg.sparsity, cfg.greg.pick_after = int(method[-1]), sparsity, 0.0
    cfg.greg.stabilize_steps = stabilize_steps
    cfg.greg.reg_by = penalty_epochs / epochs  # the penalty phases end here (stabilisation inside it)
    return cfg, epochs


def run_one(model_cfg: ModelConfig, data, cfg: PruneConfig, epochs: int, lr: float, wd: float, seed: int,
            weights: dict | None, out: Path) -> dict:
    torch.manual_seed(seed)
    model = build_model(model_cfg, data.input_shape, data.num_classes)
    if weights is not None:
        model.load_state_dict(weights)
    layers = select_layers(model, cfg.layers)
    pruner = build_pruner(cfg) if cfg.method != "dense" else Pruner()
    start = time.perf_counter()
    train(model, pruner, data, TrainConfig(epochs=epochs, lr=lr, weight_decay=wd, batch_size=128), layers,
          seed=seed, progress=False)
    seconds = time.perf_counter() - start
    frozen = pruner.freeze().eval()
    macs_dense = count_macs(frozen, data.input_shape)["dense"]
    if cfg.method in ("l1", "greg") and getattr(getattr(cfg, cfg.method), "granularity", "") == "filter":
        harvest_channels(frozen, channel_groups(frozen, torch.zeros(2, *data.input_shape)), data.input_shape)
    macs_ratio = count_macs(frozen, data.input_shape)["dense"] / macs_dense
    path = out / "model.onnx"
    export_onnx(frozen, data.test.x[:8], path)
    acc = accuracy(make_session(path), data)
    path.unlink()
    return {"accuracy": acc, "sparsity": global_sparsity(frozen, layers) if macs_ratio == 1 else 0.0,
            "macs_ratio": macs_ratio, "train_seconds": seconds,
            "state": {k: v.clone() for k, v in frozen.state_dict().items()}}


def summarise(rows: list[dict]) -> list[dict]:
    """Mean ± std of accuracy and sparsity per (model, target, method) cell."""
    cells: dict[tuple, list[dict]] = {}
    for r in rows:
        cells.setdefault((r["model"], r["target"], r["method"]), []).append(r)
    out = []
    for (model, target, method), rs in cells.items():
        acc = [r["accuracy"] for r in rs]
        out.append({"model": model, "target": target, "method": method, "seeds": len(rs),
                    "accuracy_mean": statistics.fmean(acc), "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                    "sparsity_mean": statistics.fmean(r["sparsity"] for r in rs)})
    return out


def write(meta: dict, out: Path) -> None:
    meta["summary"] = summarise(meta["rows"])
    atomic.write_json(out / "results.json", meta)
    lines = ["| model | target | method | seeds | accuracy (mean ± std) | error | sparsity |", "|---|---|---|---|---|---|---|"]
    for c in meta["summary"]:
        lines.append(f"| {c['model']} | {100 * c['target']:g}% | {c['method']} | {c['seeds']} | "
                     f"{100 * c['accuracy_mean']:.2f} ± {100 * c['accuracy_std']:.2f}% | "
                     f"{100 * (1 - c['accuracy_mean']):.2f}% | {100 * c['sparsity_mean']:.2f}% |")
    atomic.write_text(out / "summary.md", "\n".join(lines) + "\n")


def plot(meta: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from deploy.report import save_png

    models = list(dict.fromkeys(c["model"] for c in meta["summary"]))
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        cells = [c for c in meta["summary"] if c["model"] == model and c["method"] != "dense"]
        targets = sorted({c["target"] for c in cells})
        methods = list(dict.fromkeys(c["method"] for c in cells))
        width = 0.8 / max(len(methods), 1)
        for i, method in enumerate(methods):
            got = {c["target"]: c for c in cells if c["method"] == method}
            xs = [k + i * width for k, t in enumerate(targets) if t in got]
            ax.bar(xs, [100 * (1 - got[t]["accuracy_mean"]) for t in targets if t in got], width,
                   yerr=[100 * got[t]["accuracy_std"] for t in targets if t in got], capsize=3, label=method)
        ax.set_xticks([k + 0.4 - width / 2 for k in range(len(targets))], [f"{100 * t:g}%" for t in targets])
        ax.set(xlabel="sparsity", ylabel="test error (%), mean ± std over seeds", title=f"{model}, MNIST",
               yscale="log")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    save_png(fig, path, dpi=100)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("experiment", choices=["sparse", "greg"])
    p.add_argument("--models", default="lenet5,lenet300")
    p.add_argument("--sparsities", default="0.98,0.99,0.995")
    p.add_argument("--granularity", choices=["weight", "filter"], default="weight",
                   help="greg: filter = channels; --sparsities are then MAC reduction factors (e.g. 2,3,5,10)")
    p.add_argument("--extra", default="lenet5:0.95", help="more (model:sparsity) cells, comma separated")
    p.add_argument("--methods", default="")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=15, help="sparse: every run's epochs; greg: the dense pretraining")
    p.add_argument("--penalty-epochs", type=int, default=4)
    p.add_argument("--finetune-epochs", type=int, default=6)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--finetune-lr", type=float, default=0.01)
    p.add_argument("--data-root", default="../shared/data/mnist")
    p.add_argument("--train-limit", type=int, default=0)
    p.add_argument("--out", type=Path)
    p.add_argument("--update", action="store_true",
                   help="keep the rows already in OUT/results.json except those of the methods run now")
    args = p.parse_args(argv)
    out = args.out or Path("results") / f"fair-{args.experiment}"
    out.mkdir(parents=True, exist_ok=True)
    data = load_data("mnist", str(Path(args.data_root).resolve()), train_limit=args.train_limit)
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = args.methods.split(",") if args.methods else (
        ["lats", "str", "gmp", "magnitude"] if args.experiment == "sparse" else ["l1", "greg1", "greg2"])
    cells = [(m, float(s)) for m in args.models.split(",") for s in args.sparsities.split(",")]
    cells += [(c.split(":")[0], float(c.split(":")[1])) for c in args.extra.split(",") if c]
    steps_per_epoch = -(-len(data.train) // 128)
    meta = {"experiment": args.experiment, "granularity": args.granularity, "data": "MNIST", "train_samples": len(data.train),
            "test_samples": len(data.test), "epochs": args.epochs, "lr": args.lr, "batch_size": 128,
            "weight_decay": WEIGHT_DECAY, "seeds": seeds, "machine": platform.platform(),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "rows": []}
    if args.experiment == "greg":
        meta.update(penalty_epochs=args.penalty_epochs, finetune_epochs=args.finetune_epochs,
                    finetune_lr=args.finetune_lr, stabilize_steps=steps_per_epoch)
    if args.update and (out / "results.json").exists():
        old = json.loads((out / "results.json").read_text())
        meta["rows"] = [r for r in old["rows"] if r["method"] not in methods]
    dense: dict[tuple[str, int], dict] = {}
    jobs = [(model, target, method, seed) for model, target in cells for method in methods for seed in seeds]
    for model, target, method, seed in tqdm(jobs, desc=args.experiment):
        model_cfg = MODELS[model]
        if args.experiment == "sparse":
            row = run_one(model_cfg, data, sparse_config(method, target), args.epochs, args.lr,
                          WEIGHT_DECAY[method], seed, None, out)
        else:
            if (model, seed) not in dense:
                d = run_one(model_cfg, data, PruneConfig(method="dense"), args.epochs, args.lr, 5e-4, seed, None, out)
                dense[model, seed] = d
                meta["rows"].append({"model": model, "target": 0.0, "method": "dense", "seed": seed,
                                     **{k: v for k, v in d.items() if k != "state"}})
            fraction = target
            if args.granularity == "filter":  # the one channel fraction that divides the MACs by `target`
                probe = build_model(model_cfg, data.input_shape, data.num_classes)
                groups = [g for g in channel_groups(probe, torch.zeros(2, *data.input_shape)) if g.prunable]
                fraction = ratio_for_macs(probe, groups, data.input_shape, target)[0]
            cfg, epochs = greg_config(method, fraction, args.penalty_epochs, args.finetune_epochs, steps_per_epoch,
                                      args.granularity)
            row = run_one(model_cfg, data, cfg, epochs, args.finetune_lr, WEIGHT_DECAY[method], seed,
                          dense[model, seed]["state"], out)
        row.pop("state")
        meta["rows"].append({"model": model, "target": target, "method": method, "seed": seed, **row})
        tqdm.write(f"{model} {100 * target:g}% {method} seed {seed}: accuracy {row['accuracy']:.4f} "
                   f"sparsity {row['sparsity']:.4f} ({row['train_seconds']:.0f} s)")
        write(meta, out)
    plot(meta, out / "error_vs_sparsity.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
