"""Pipeline runs behind the results pages' tables: each is `sparsepipe run CONFIG --set ...` as a user
types it; its report.json (and the wall time) is kept in results/pipeline-runs/NAME.json, from which
tools/tables.py writes the tables.

    OMP_NUM_THREADS=1 .venv/bin/python tools/bench_runs.py                 # every run
    OMP_NUM_THREADS=1 .venv/bin/python tools/bench_runs.py lenet5-lats     # one

The run folders go to a temporary directory (delete nothing else); an existing result is replaced only
when its run completes.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from compress import atomic  # noqa: E402

OUT = ROOT / "results" / "pipeline-runs"
# name -> (config, overrides): the rows of the tables in docs/results.md and docs/spiking.md
RUNS: dict[str, tuple[str, list[str]]] = {
    "lenet5-lats": ("configs/mnist-lenet5-lats.toml", []),
    "lenet5-gmp": ("configs/mnist-lenet5-gmp.toml", []),
    "lenet5-magnitude": ("configs/mnist-lenet5-magnitude.toml", []),
    "spiking-cnn-lats": ("configs/mnist-spiking-cnn-lats.toml", []),
}


def run(name: str, mnist: Path, work: Path) -> dict:
    """One pipeline run; its report with the command and the wall time."""
    config, overrides = RUNS[name]
    args = [sys.executable, "-m", "deploy", "run", config, "--out", str(work / name), "--no-progress",
            "--set", f"data.root={str(mnist)!r}"]
    for o in overrides:
        args += ["--set", o]
    t0 = time.perf_counter()
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode not in (0, 1):  # 1: the gate failed, a result all the same
        raise SystemExit(f"{name}: sparsepipe exited {done.returncode}\n{done.stderr[-2000:]}")
    report = json.loads((work / name / "report" / "report.json").read_text())
    shown = ["sparsepipe", "run", config, *(a for o in overrides for a in ("--set", o))]
    return {"name": name, "command": " ".join(shown), "wall_seconds": round(seconds, 1),
            "machine": platform.platform(), "report": report}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", help=f"any of: {', '.join(RUNS)} (default: all)")
    p.add_argument("--mnist", type=Path, default=ROOT.parent / "shared" / "data" / "mnist")
    args = p.parse_args(argv)
    unknown = [n for n in args.names if n not in RUNS]
    if unknown:
        p.error(f"unknown run {unknown[0]!r}")
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        for name in args.names or RUNS:
            result = run(name, args.mnist.resolve(), Path(work))
            atomic.write_json(OUT / f"{name}.json", result)
            r = result["report"]
            print(f"{name}: {100 * r['sparse']['accuracy']:.2f}% at {100 * r['sparsity']['global']:.2f}% sparsity "
                  f"({result['wall_seconds']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
