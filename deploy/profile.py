"""Latency profile of ONNX models, side by side: batch sizes × thread counts, percentiles,
throughput, onnxruntime's per-operator breakdown, machine info; JSON and a PNG.

The validate stage uses the same measurement (`latency.compare_latency`).
"""
from __future__ import annotations

import json
import os
import platform
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort

from compress.errors import UserError

from .latency import compare_latency
from .report import save_png
from .runtime import open_model


def input_for(session, batch: int, seed: int = 0) -> np.ndarray:
    """Random float32 input of the model's declared shape with the batch dimension set."""
    shape = session.get_inputs()[0].shape
    dims = [batch] + [d if isinstance(d, int) else 1 for d in shape[1:]]
    if not shape or any(not isinstance(d, int) for d in shape[1:]):
        raise UserError(f"model input {session.get_inputs()[0].name!r} has shape {shape}: profile needs fixed "
                        "non-batch dimensions")
    need = int(np.prod(dims, dtype=np.int64)) * 4 * 3  # the input, the outputs and the runtime's buffers, roughly
    free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if need > free:
        raise UserError(f"--batch {batch}: an input of shape {dims} needs about {need / 2**30:.1f} GiB, "
                        f"more than the {free / 2**30:.1f} GiB of memory free")
    return np.random.default_rng(seed).standard_normal(dims).astype(np.float32)


def operator_breakdown(path: str | Path, batch: int, threads: int, runs: int = 30) -> dict[str, float]:
    """Share of node time per operator type, from onnxruntime's own profiler."""
    with tempfile.TemporaryDirectory() as tmp:
        runner = open_model(path, threads, profile_prefix=os.path.join(tmp, "ort"))
        session = getattr(runner, "session", runner)  # a SparseSession wraps the InferenceSession
        x = input_for(runner, batch)
        for _ in range(runs):
            runner.run(None, {runner.get_inputs()[0].name: x})
        trace = json.loads(Path(session.end_profiling()).read_text())
    per_op: dict[str, float] = defaultdict(float)
    for event in trace:
        if event.get("cat") == "Node" and "op_name" in event.get("args", {}):
            per_op[event["args"]["op_name"]] += event.get("dur", 0)
    total = sum(per_op.values()) or 1.0
    return dict(sorted(((k, v / total) for k, v in per_op.items()), key=lambda kv: -kv[1]))


def machine_info() -> dict:
    return {"platform": platform.platform(), "processor": platform.machine(), "cpu_count": os.cpu_count(),
            "onnxruntime": ort.__version__, "providers": ort.get_available_providers()}


def profile(models: dict[str, Path], batches: list[int], threads: list[int], seconds: float = 2.0,
            warmup_seconds: float = 0.5, breakdown: bool = True) -> dict:
    """One entry per (threads, batch): stats of every model, ratios against the first (the baseline)."""
    names = list(models)
    results = []
    for t in threads:
        sessions = {n: open_model(p, threads=t) for n, p in models.items()}
        for b in batches:
            x = input_for(sessions[names[0]], b)
            stats = compare_latency(sessions, x, warmup=5, runs=20, seconds=seconds,
                                    warmup_seconds=warmup_seconds, keep_times=True)
            for n in names[1:]:
                stats[n]["ratio_vs_" + names[0]] = stats[n]["p50_ms"] / stats[names[0]]["p50_ms"]
            results.append({"threads": t, "batch": b, "models": stats})
    report = {"models": {n: str(p) for n, p in models.items()}, "baseline": names[0], "machine": machine_info(),
              "seconds_per_setting": seconds, "warmup_seconds": warmup_seconds, "results": results}
    if breakdown:
        report["operators"] = {n: operator_breakdown(p, batches[0], threads[0]) for n, p in models.items()}
    return report


def plot(report: dict, path: Path) -> None:
    """Box plots of the latency distributions, one panel per (threads, batch)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    fig, axes = plt.subplots(1, len(results), figsize=(3.2 * len(results) + 1, 3.6), squeeze=False)
    for ax, r in zip(axes[0], results):
        names = list(r["models"])
        ax.boxplot([r["models"][n]["times_ms"] for n in names], showfliers=False)
        ax.set_xticks(range(1, len(names) + 1), names, rotation=30, fontsize=7)
        ax.set_title(f"batch {r['batch']}, {r['threads']} thread(s)", fontsize=9)
        ax.set_ylabel("ms")
    fig.tight_layout()
    save_png(fig, path)


def without_raw_times(report: dict) -> dict:
    out = json.loads(json.dumps(report))
    for r in out["results"]:
        for stats in r["models"].values():
            stats.pop("times_ms", None)
    return out
