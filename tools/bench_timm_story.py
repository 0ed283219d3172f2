"""Issue 25's user story, as a user runs it: a timm model on an image folder, `sparsepipe run` with
`prune.filter.latency_target = 2` (configs/imagefolder-timm-latency2.toml), one run folder per model.
Collects from each report.json: accuracy in onnxruntime (the dense baseline and the pruned model), the
exported latency ratio (p50, batch 1, 1 thread), MACs ratio, the stage times and the gate; writes
results/timm-latency-story/results.json.

Two ways in. From random weights (`--checkpoint-epochs 0`): the dense baseline is trained with the
same budget as the pruned model. From a checkpoint, as a user with a trained timm model would
(`--checkpoint-epochs N`): the model is first trained dense for N epochs (`sparsepipe run` with
`prune.method = "dense"`, once per model, kept in runs/ckpt-MODEL-N), then `sparsepipe run` starts from
those weights (`model.weights`; the checkpoint itself is the dense baseline), cuts its channels at
step 0 and fine-tunes for --epochs at --lr.

    .venv/bin/python tools/make_imagefolder.py ../shared/data/mnist data/mnist-folder --train 4000 --test 1000
    .venv/bin/python tools/bench_timm_story.py --models efficientnet_b0,regnety_004 --checkpoint-epochs 6 --epochs 3
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
CONFIG = ROOT / "configs" / "imagefolder-timm-latency2.toml"


def sparsepipe(command: str, model: str, out: Path, settings: list[str]) -> subprocess.CompletedProcess:
    sets = [f'model.name="timm:{model}"', *settings]
    cmd = [sys.executable, "-m", "deploy", command, str(CONFIG), *[a for s in sets for a in ("--set", s)],
           "--out", str(out), "--no-progress"]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)


def checkpoint(model: str, epochs: int, runs: Path, extra: list[str]) -> tuple[Path | None, str]:
    """The dense checkpoint of `model` after `epochs` epochs (trained once; later calls reuse it);
    `extra` are further --set settings (an optimizer, a learning rate; not distillation's)."""
    out = runs / f"ckpt-{model}-{epochs}"
    # distillation shapes the pruned model's training only: the checkpoint (a dense run) is the same without it
    extra = [e for e in extra if not e.startswith("train.distill")]
    res = sparsepipe("run", model, out, ['prune.method="dense"', f"train.epochs={epochs}", *extra])
    weights = out / "frozen" / "dense.safetensors"  # the trained model's plain state_dict
    return (weights, "") if res.returncode == 0 and weights.exists() else \
        (None, (res.stderr.strip().splitlines() or ["?"])[-1][:300])


def story(model: str, epochs: int, runs: Path, weights: Path | None = None, lr: float | None = None,
          extra: list[str] = ()) -> dict:
    """One `sparsepipe run` of the story config for timm model `model` (from `weights` when given, with
    the further --set settings `extra`); its figures from report.json."""
    out = runs / (f"story-{model}" if weights is None else f"story-{model}-from-{weights.parents[1].name}")
    if extra:  # a run folder per setting, so that rows with and without (say) distillation stand side by side
        out = out.with_name(out.name + "-" + "-".join(re.sub(r"[^\w.]+", "_", e) for e in extra))
    settings = [f"train.epochs={epochs}"]
    if weights is not None:
        settings += [f'model.weights="{weights}"', "prune.filter.prune_after=0.0"]
    if lr is not None:
        settings.append(f"train.lr={lr}")
    res = sparsepipe("run", model, out, [*extra, *settings])
    stages = {m[1]: float(m[2]) for m in re.finditer(r"\] (\w+): done in ([\d.]+) s", res.stdout)}
    report = out / "report" / "report.json"
    if not report.exists():
        return {"model": model, "status": "failed", "exit": res.returncode,
                "error": (res.stderr.strip().splitlines() or ["?"])[-1][:300]}
    r = json.loads(report.read_text())
    st = r.get("structure") or {}
    return {"model": model, "status": "ran", "exit": res.returncode, "epochs": epochs,
            "from": "random weights" if weights is None else weights.parents[1].name,
            "dense_accuracy": r["dense"]["accuracy"], "sparse_accuracy": r["sparse"]["accuracy"],
            "latency_ratio": r["latency"]["sparse"]["ratio_vs_dense"],
            "dense_p50_ms": r["latency"]["dense"]["p50_ms"], "sparse_p50_ms": r["latency"]["sparse"]["p50_ms"],
            "macs_ratio": st.get("macs_after", 0) / max(st.get("macs_before", 1), 1),
            "stage_seconds": stages, "gate_passed": r["gate"]["passed"], "gate_failures": r["gate"]["failures"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="efficientnet_b0,mobilenetv3_large_100,regnety_004,densenet121,"
                                       "convnext_atto,deit_tiny_patch16_224")
    p.add_argument("--epochs", type=int, default=3, help="the pruned model's epochs (fine-tuning from a checkpoint)")
    p.add_argument("--checkpoint-epochs", type=int, default=0,
                   help="train each model dense for this many epochs first and start from it (0: random weights)")
    p.add_argument("--lr", type=float, default=None, help="the run's learning rate (default: the config's)")
    p.add_argument("--set", action="append", default=[], dest="extra", metavar="KEY=VALUE",
                   help="a further config setting for every run (dense checkpoint and story), as sparsepipe's --set")
    p.add_argument("--runs", type=Path, default=ROOT / "runs")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "timm-latency-story")
    args = p.parse_args()
    from compress import atomic

    path = args.out / "results.json"
    rows = json.loads(path.read_text())["rows"] if path.exists() else []
    for model in args.models.split(","):
        weights, error = checkpoint(model, args.checkpoint_epochs, args.runs, args.extra) if args.checkpoint_epochs else (None, "")
        row = story(model, args.epochs, args.runs, weights, args.lr, args.extra) if not error else \
            {"model": model, "status": "failed", "error": f"dense checkpoint: {error}"}
        row["checkpoint_epochs"] = args.checkpoint_epochs
        row["settings"] = args.extra
        key = (model, args.checkpoint_epochs, args.extra)
        rows = [r for r in rows if (r["model"], r.get("checkpoint_epochs", 0), r.get("settings", [])) != key]
        rows.append(row)
        print(json.dumps(row), flush=True)
        atomic.write_json(path, {"machine": platform.platform(), "config": "configs/imagefolder-timm-latency2.toml",
                                 "data": "MNIST as an image folder, 4,000 train / 1,000 test, 64x64", "rows": rows})


if __name__ == "__main__":
    main()
