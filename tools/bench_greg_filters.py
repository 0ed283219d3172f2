"""GReg-1 against one-shot L1 filter pruning: the same channels removed, the same training budget.

Both runs start from seed 0 and train dense identically until the pick (pick_after = prune_after),
so they score the same weights and pick the same channels (checked and recorded). L1 zeroes them at
once and fine-tunes for the rest of the epochs; GReg-1 first pushes them to zero with its growing
penalty (until reg_by), then removes and fine-tunes. One ratio per MAC factor is cut from every
channel group. Accuracy: MNIST test set, onnxruntime, after the channels were physically removed.
Writes results/greg-filters/results.json.

    .venv/bin/python tools/bench_greg_filters.py --model resnet20 --factors 2,3
"""
from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_structured import accuracy, train_and_cut  # noqa: E402
from compress import atomic  # noqa: E402
from compress.data import load_data  # noqa: E402
from compress.models import ModelConfig, build_model  # noqa: E402
from compress.config.prune import PruneConfig  # noqa: E402
from compress.structured import channel_groups, ratio_for_macs  # noqa: E402
from deploy.export import export_onnx  # noqa: E402
from compress.flops import count_macs  # noqa: E402
from deploy.latency import make_session  # noqa: E402


def dropped_channels(pruner) -> dict[str, list[int]]:
    if hasattr(pruner, "pruned"):  # GReg: a boolean per channel of each group
        return {k: torch.nonzero(v).flatten().tolist() for k, v in pruner.pruned.items()}
    return {k: v.tolist() for k, v in pruner.dropped.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--data-root", default="../shared/data/mnist")
    p.add_argument("--train-limit", type=int, default=12000)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--factors", default="2,3")
    p.add_argument("--pick-after", type=float, default=0.25)
    p.add_argument("--reg-by", type=float, default=0.6)
    p.add_argument("--out", type=Path, default=Path("results/greg-filters"))
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    data = load_data("mnist", str(Path(args.data_root).resolve()), train_limit=args.train_limit)
    probe = build_model(ModelConfig(name=args.model), data.input_shape, data.num_classes)
    groups = [g for g in channel_groups(probe, torch.zeros(2, *data.input_shape)) if g.prunable]
    meta = {"model": args.model, "data": "MNIST", "train_samples": len(data.train), "epochs": args.epochs,
            "pick_after": args.pick_after, "reg_by": args.reg_by, "machine": platform.platform(),
            "torch": torch.__version__, "rows": []}
    for factor in tqdm([float(f) for f in args.factors.split(",")], desc="factors"):
        ratio, dense_macs, _ = ratio_for_macs(probe, groups, data.input_shape, factor)
        picks = {}
        for method in ("l1", "greg"):
            cfg = PruneConfig(method=method)  # l1 in channel mode: GReg-1's counts, no rounding to multiples of 8
            cfg.l1.granularity, cfg.l1.sparsity, cfg.l1.prune_after = "filter", ratio, args.pick_after
            cfg.greg.variant, cfg.greg.granularity, cfg.greg.sparsity = 1, "filter", ratio
            cfg.greg.pick_after, cfg.greg.reg_by = args.pick_after, args.reg_by
            model, pruner, seconds = train_and_cut(args.model, data, cfg, args.epochs, args.lr)
            picks[method] = dropped_channels(pruner)
            path = args.out / f"{method}.onnx"
            export_onnx(model, data.test.x[:8], path)
            row = {"factor": factor, "ratio": ratio, "method": "GReg-1" if method == "greg" else "L1 one-shot",
                   "accuracy": accuracy(make_session(path), data), "train_seconds": seconds,
                   "macs_ratio": count_macs(model, data.input_shape)["dense"] / dense_macs,
                   "params": sum(q.numel() for q in model.parameters())}
            if method == "greg":
                row["same_channels_as_l1"] = picks["greg"] == picks["l1"]
                row["greg_phase_at_end"] = pruner.phase
            path.unlink()
            meta["rows"].append(row)
            tqdm.write(f"x{factor:g} {row['method']:12s} acc {row['accuracy']:.4f} MACs x{row['macs_ratio']:.3f}")
    atomic.write_json(args.out / "results.json", meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
