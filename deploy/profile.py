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


DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
          "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16, "tensor(int8)": np.int8,
          "tensor(uint8)": np.uint8, "tensor(uint16)": np.uint16, "tensor(bool)": np.bool_}


def signature(session) -> list[tuple[str, str, list]]:
    """(name, type, shape) of every input the caller feeds."""
    return [(i.name, i.type, list(i.shape)) for i in session.get_inputs()]


def feeds_for(session, batch: int, seed: int = 0, where: str = "model") -> dict[str, np.ndarray]:
    """Random inputs of every declared input's type and shape: the first dimension, when symbolic, is
    `batch`; other symbolic dimensions are 1. Floats are standard normal, integers 0 or 1 (valid as
    indices and as counts), booleans random. Refused before any array is made when they would not fit."""
    inputs = session.get_inputs()
    if not inputs:
        raise UserError(f"{where}: the model declares no inputs; profile times a model on inputs it feeds")
    specs = []
    for i in inputs:
        dtype = DTYPES.get(i.type)
        if dtype is None:
            raise UserError(f"{where}: input {i.name!r} is of type {i.type}; profile feeds tensors of "
                            f"{', '.join(t[7:-1] for t in DTYPES)}")
        dims = [batch if k == 0 and not isinstance(d, int) else d if isinstance(d, int) and d >= 0 else 1
                for k, d in enumerate(i.shape or [])]
        specs.append((i.name, np.dtype(dtype), dims))
    need = sum(int(np.prod(dims, dtype=np.int64)) * dtype.itemsize * 3 for _, dtype, dims in specs)  # + outputs
    free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if need > free:
        raise UserError(f"--batch {batch}: inputs of shape {' '.join(str(d) for _, _, d in specs)} need about "
                        f"{need / 2**30:.1f} GiB, more than the {free / 2**30:.1f} GiB of memory free")
    rng = np.random.default_rng(seed)
    return {name: (rng.standard_normal(dims) if np.issubdtype(dtype, np.floating)
                   else rng.integers(0, 2, dims)).astype(dtype) for name, dtype, dims in specs}


def operator_breakdown(path: str | Path, batch: int, threads: int, runs: int = 30) -> dict[str, float]:
    """Share of node time per operator type, from onnxruntime's own profiler."""
    with tempfile.TemporaryDirectory() as tmp:
        runner = open_model(path, threads, profile_prefix=os.path.join(tmp, "ort"))
        session = getattr(runner, "session", runner)  # a SparseSession wraps the InferenceSession
        feeds = feeds_for(runner, batch, where=str(path))
        for _ in range(runs):
            _run(runner, feeds, path)
        trace = json.loads(Path(session.end_profiling()).read_text())
    per_op: dict[str, float] = defaultdict(float)
    for event in trace:
        if event.get("cat") == "Node" and "op_name" in event.get("args", {}):
            per_op[event["args"]["op_name"]] += event.get("dur", 0)
    total = sum(per_op.values()) or 1.0
    return dict(sorted(((k, v / total) for k, v in per_op.items()), key=lambda kv: -kv[1]))


def _run(session, feeds: dict, path) -> None:
    try:
        session.run(None, feeds)
    except Exception as e:  # onnxruntime's own error types: a model that cannot run on these inputs
        raise UserError(f"{path}: inference failed ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    """onnxruntime's message in one line of at most ~200 characters, keeping its end (where it says why)."""
    line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return line if len(line) <= 200 else f"{line[:80]} ... {line[-110:]}"


def machine_info() -> dict:
    return {"platform": platform.platform(), "processor": platform.machine(), "cpu_count": os.cpu_count(),
            "onnxruntime": ort.__version__, "providers": ort.get_available_providers()}


def variants(path: Path) -> dict[str, Path]:
    """What `path` names, by model name: a .onnx file or a sparse-compute folder (one model), or a run
    folder or its onnx/ folder (every variant in it, dense first as the baseline)."""
    if path.is_dir() and (path / "config.toml").is_file() and (path / "onnx").is_dir():
        path = path / "onnx"
    if not path.is_dir() or (path / "manifest.json").is_file():
        return {"model": path}
    found = {p.stem: p for p in sorted(path.glob("*.onnx")) if p.is_file()}
    found.update({p.name: p for p in sorted(path.iterdir()) if p.is_dir() and (p / "manifest.json").is_file()})
    if not found:
        raise UserError(f"{path}: no .onnx file or sparse-compute folder to profile")
    return dict(sorted(found.items(), key=lambda kv: kv[0] != "dense"))


def profile(models: dict[str, Path], batches: list[int], threads: list[int], seconds: float = 2.0,
            warmup_seconds: float = 0.5, breakdown: bool = True) -> dict:
    """One entry per (threads, batch): stats of every model, ratios against the first (the baseline).
    Every model must take the baseline's inputs (names, types, shapes)."""
    names = list(models)
    results = []
    for t in threads:
        sessions = {n: open_model(p, threads=t) for n, p in models.items()}
        for n in names[1:]:
            if signature(sessions[n]) != signature(sessions[names[0]]):
                raise UserError(f"{models[n]}: takes inputs {signature(sessions[n])}, the baseline "
                                f"{models[names[0]]} takes {signature(sessions[names[0]])}: not comparable")
        for b in batches:
            feeds = feeds_for(sessions[names[0]], b, where=str(models[names[0]]))
            for n in names:
                _run(sessions[n], feeds, models[n])  # one line naming the model that cannot run, not a traceback
            try:
                stats = compare_latency(sessions, feeds, warmup=5, runs=20, seconds=seconds,
                                        warmup_seconds=warmup_seconds, keep_times=True)
            except Exception as e:
                raise UserError(f"{', '.join(str(p) for p in models.values())}: inference failed "
                                f"({_first_line(e)})") from None
            for n in names[1:]:
                stats[n]["ratio_vs_" + names[0]] = stats[n]["p50_ms"] / stats[names[0]]["p50_ms"]
            results.append({"threads": t, "batch": b, "models": stats})
    report = {"models": {n: str(p) for n, p in models.items()}, "baseline": names[0], "machine": machine_info(),
              "seconds_per_setting": seconds, "warmup_seconds": warmup_seconds, "results": results}
    if breakdown:
        report["operators"] = {n: operator_breakdown(p, batches[0], threads[0]) for n, p in models.items()}
    return report


START_SECONDS = 10.0  # a child's start, sessions' loading and the operator breakdown, beyond the timed seconds


def time_limit(batches: list[int], threads: list[int], seconds: float, warmup_seconds: float) -> float:
    return START_SECONDS + 3 * len(batches) * len(threads) * (seconds + warmup_seconds)


def profile_bounded(models: dict[str, Path], batches: list[int], threads: list[int], seconds: float = 2.0,
                    warmup_seconds: float = 0.5) -> dict:
    """`profile` in a child process, abandoned (killed) past `time_limit`: one inference of a model can
    run for ever (an ONNX Loop with a 2^62 trip count), and --seconds must bound the command."""
    import multiprocessing as mp

    limit = time_limit(batches, threads, seconds, warmup_seconds)
    ctx = mp.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child, args=(send, models, batches, threads, seconds, warmup_seconds), daemon=True)
    child.start()
    send.close()
    try:
        if not receive.poll(limit):
            raise UserError(f"{', '.join(str(p) for p in models.values())}: profiling did not finish within "
                            f"{limit:.0f} s (--seconds {seconds:g} per setting); abandoned")
        kind, value = receive.recv()
    except EOFError:
        child.join(5)
        raise UserError(f"{', '.join(str(p) for p in models.values())}: the profiling process died "
                        f"(exit {child.exitcode}; out of memory?)") from None
    finally:
        if child.is_alive():
            child.kill()
        child.join(5)
    if kind == "error":
        raise UserError(value)
    return value


def _child(send, models, batches, threads, seconds, warmup_seconds) -> None:
    try:
        send.send(("ok", profile(models, batches, threads, seconds, warmup_seconds)))
    except UserError as e:
        send.send(("error", str(e)))
    except Exception as e:  # onnxruntime's own failures, e.g. an allocation it cannot make
        send.send(("error", f"{', '.join(str(p) for p in models.values())}: {_first_line(e)}"))


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
