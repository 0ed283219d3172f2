"""int8 on top of pruning: a 95%-sparse LeNet-5 and a channel-cut ResNet-20 (MNIST), each exported
dense fp32, pruned fp32 and pruned int8 (static, calibrated), timed side by side in onnxruntime
(1 thread, batch 1 and 32) with accuracy on the 10,000 test images. Runs the real pipeline.

    .venv/bin/python tools/bench_int8.py --mnist ../shared/data/mnist
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compress import atomic  # noqa: E402
from deploy.cli import main as sparsepipe  # noqa: E402

CASES = {
    "lenet5-magnitude-95": ("mnist-lenet5-magnitude.toml", ["prune.magnitude.sparsity=0.95", "train.epochs=8"]),
    "resnet20-filter-2x-pow2": ("mnist-resnet20-filter-2x.toml", ["prune.filter.pow2=true", "train.epochs=4",
                                                                  "data.train_limit=12000"]),
    "resnet20-filter-3x-latency": ("mnist-resnet20-filter-2x.toml", [
        "prune.filter.flops_target=0", "prune.filter.latency_target=3", "prune.filter.round_to=0", "train.epochs=4",
        "data.train_limit=12000"]),
    # widths searched by timing int8 models (freeze.latency_precision): 2x faster than the dense int8 model
    "resnet20-filter-2x-int8-latency": ("mnist-resnet20-filter-2x.toml", [
        "prune.filter.flops_target=0", "prune.filter.latency_target=2", "prune.filter.round_to=0",
        "freeze.latency_precision='int8'", "freeze.latency_batch_size=32", "train.epochs=4",
        "data.train_limit=12000"]),
    # the same at full length: all 60,000 training images, 8 epochs (about 40 minutes on 1 thread)
    "resnet20-filter-2x-int8-latency-full": ("mnist-resnet20-filter-2x.toml", [
        "prune.filter.flops_target=0", "prune.filter.latency_target=2", "prune.filter.round_to=0",
        "freeze.latency_precision='int8'", "freeze.latency_batch_size=32", "train.epochs=8"]),
}


def run(config: str, sets: list[str], out: Path, batch: int) -> dict:
    args = ["run", str(ROOT / "configs" / config), "--out", str(out), "--no-progress",
            "--set", "export.int8='static'", "--set", f"validate.latency_batch_size={batch}",
            "--set", "validate.runs=300", "--set", "gate.max_accuracy_drop=1", "--set", "gate.min_sparsity=0",
            "--set", "gate.max_macs_ratio=0"]
    for s in sets:
        args += ["--set", s]
    with contextlib.redirect_stdout(io.StringIO()):
        code = sparsepipe(args)
    if code not in (0, 1):
        raise SystemExit(f"{config}: sparsepipe exited {code}")
    return json.loads((out / "report" / "report.json").read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mnist", type=Path, default=ROOT.parent / "shared" / "data" / "mnist")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "int8")
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated, of: " + ", ".join(CASES))
    p.add_argument("--set", action="append", default=[], help="an extra config override for every case")
    args = p.parse_args()
    old = args.out / "results.json"  # rows of cases not run this time are kept
    rows = [r for r in json.loads(old.read_text())["rows"] if r["case"] not in args.cases.split(",")] \
        if old.exists() else []
    for name in args.cases.split(","):
        config, sets = CASES[name]
        sets = sets + args.set
        sets = sets + [f"data.root={json.dumps(str(args.mnist.resolve()))}"]
        for batch in (1, 32):
            r = run(config, sets, args.out / "runs" / name, batch)
            lat, v = r["latency"], r["variants"]
            row = {"case": name, "batch": batch, "dense_accuracy": r["dense"]["accuracy"],
                   "sparse_accuracy": r["sparse"]["accuracy"], "sparse_int8_accuracy": v["sparse-int8"]["accuracy"],
                   "dense_int8_accuracy": v["dense-int8"]["accuracy"], "sparsity": r["sparsity"]["global"],
                   "dense_ms": lat["dense"]["p50_ms"], "sparse_ratio": lat["sparse"]["ratio_vs_dense"],
                   "sparse_int8_ratio": lat["sparse-int8"]["ratio_vs_dense"],
                   "dense_int8_ratio": lat["dense-int8"]["ratio_vs_dense"],
                   "macs_ratio": (r["structure"] or {}).get("macs_after", 1) / max((r["structure"] or {}).get(
                       "macs_before", 1), 1),
                   "int8_float_nodes": len(json.loads((args.out / "runs" / name / "onnx" / "export.json").read_text())[
                       "sparse-int8"].get("float_nodes", [])),
                   "extra_settings": args.set}
            rows.append(row)
            print(json.dumps(row), flush=True)
            atomic.write_json(args.out / "results.json", {"machine": platform.platform(), "threads": 1, "rows": rows})


if __name__ == "__main__":
    main()
