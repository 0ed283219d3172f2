"""Issue 25's user story, as a user runs it: a timm model on an image folder, `sparsepipe run` with
`prune.filter.latency_target = 2` (configs/imagefolder-timm-latency2.toml), one run folder per model.
Collects from each report.json: accuracy in onnxruntime (dense baseline trained with the same budget,
and the pruned model), the exported latency ratio (p50, batch 1, 1 thread), MACs ratio, the stage
times and the gate; writes results/timm-latency-story/results.json.

    .venv/bin/python tools/make_imagefolder.py ../shared/data/mnist data/mnist-folder --train 4000 --test 1000
    .venv/bin/python tools/bench_timm_story.py --models efficientnet_b0,regnety_004 --epochs 3
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def story(model: str, epochs: int, runs: Path) -> dict:
    """One `sparsepipe run` of the story config for timm model `model`; its figures from report.json."""
    out = runs / f"story-{model}"
    cmd = [sys.executable, "-m", "deploy", "run", str(ROOT / "configs" / "imagefolder-timm-latency2.toml"),
           "--set", f'model.name="timm:{model}"', "--set", f"train.epochs={epochs}", "--out", str(out),
           "--no-progress"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    stages = {m[1]: float(m[2]) for m in re.finditer(r"\] (\w+): done in ([\d.]+) s", res.stdout)}
    report = out / "report" / "report.json"
    if not report.exists():
        return {"model": model, "status": "failed", "exit": res.returncode,
                "error": (res.stderr.strip().splitlines() or ["?"])[-1][:300]}
    r = json.loads(report.read_text())
    st = r.get("structure") or {}
    return {"model": model, "status": "ran", "exit": res.returncode, "epochs": epochs,
            "dense_accuracy": r["dense"]["accuracy"], "sparse_accuracy": r["sparse"]["accuracy"],
            "latency_ratio": r["latency"]["sparse"]["ratio_vs_dense"],
            "dense_p50_ms": r["latency"]["dense"]["p50_ms"], "sparse_p50_ms": r["latency"]["sparse"]["p50_ms"],
            "macs_ratio": st.get("macs_after", 0) / max(st.get("macs_before", 1), 1),
            "stage_seconds": stages, "gate_passed": r["gate"]["passed"], "gate_failures": r["gate"]["failures"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="efficientnet_b0,mobilenetv3_large_100,regnety_004,densenet121,"
                                       "convnext_atto,deit_tiny_patch16_224")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--runs", type=Path, default=ROOT / "runs")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "timm-latency-story")
    args = p.parse_args()
    from compress import atomic

    path = args.out / "results.json"
    rows = json.loads(path.read_text())["rows"] if path.exists() else []
    for model in args.models.split(","):
        row = story(model, args.epochs, args.runs)
        rows = [r for r in rows if r["model"] != model] + [row]
        print(json.dumps(row), flush=True)
        atomic.write_json(path, {"machine": platform.platform(), "config": "configs/imagefolder-timm-latency2.toml",
                                 "data": "MNIST as an image folder, 4,000 train / 1,000 test, 64x64", "rows": rows})


if __name__ == "__main__":
    main()
