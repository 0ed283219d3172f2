"""Latency of ONNX models in onnxruntime, measured side by side: warm-up, then interleaved timed runs."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort

from compress.errors import UserError


MAX_ONNX_BYTES = 2 << 30  # protobuf's limit: a larger .onnx file is not a valid model


def make_session(path: str | Path, threads: int = 1, profile_prefix: str | None = None) -> ort.InferenceSession:
    """A CPU session with a fixed thread count (sequential execution, so numbers compare);
    with `profile_prefix`, onnxruntime's profiler writes its trace there."""
    options = ort.SessionOptions()
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # SparseToDenseMatMul's shape inference ignores transA, so onnxruntime warns on every run that
    # the output shape differs from the one it inferred (the values are right).
    # Fatal only: a failed run is raised as an exception anyway (and reported in one line), so
    # onnxruntime's own coloured error log would only print it twice.
    options.log_severity_level = 4
    if not Path(path).is_file():
        raise UserError(f"{path}: ONNX file not found")
    if Path(path).stat().st_size > MAX_ONNX_BYTES:
        raise UserError(f"{path}: {Path(path).stat().st_size} bytes, more than the {MAX_ONNX_BYTES} an ONNX file "
                        "without external data can hold")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own types for corrupt or unsupported files
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"{path}: onnxruntime cannot load this model ({first[:200]})") from None


def summarize(times_ms: list[float]) -> dict:
    """Percentile summary of one model's timings (milliseconds)."""
    a = np.asarray(times_ms)
    return {"runs": int(a.size), "mean_ms": float(a.mean()), "std_ms": float(a.std()),
            "min_ms": float(a.min()), "p50_ms": float(np.percentile(a, 50)),
            "p90_ms": float(np.percentile(a, 90)), "p99_ms": float(np.percentile(a, 99))}


# What every timing decision calls to measure: compare_latency's signature, (sessions, x, *, warmup, runs, ...)
# -> {name: {"p50_ms", ...}}. Decisions take one as a parameter (default: compare_latency), so tests can drive
# them with fixed timings and assert the decision; real timing belongs in benchmarks.
Timer = Callable[..., dict[str, dict]]


def compare_latency(sessions: dict, x: np.ndarray | dict[str, np.ndarray], *, warmup: int = 20, runs: int = 200,
                    seconds: float = 0.0, warmup_seconds: float = 0.0, keep_times: bool = False) -> dict[str, dict]:
    """Time every session on the same input in interleaved rounds (the order alternates, so drift
    and thermal effects hit all alike). Runs at least `runs` rounds, and until `seconds` have passed.
    `x`: the one input's array, or feeds by input name (models with several inputs)."""
    names = list(sessions)
    feeds = {n: x if isinstance(x, dict) else {sessions[n].get_inputs()[0].name: x} for n in names}
    first = next(iter(x.values())) if isinstance(x, dict) else x
    batch = len(first) if np.ndim(first) else 1
    start = time.perf_counter()
    i = 0
    while i < warmup or time.perf_counter() - start < warmup_seconds:
        for n in names:
            sessions[n].run(None, feeds[n])
        i += 1
    times: dict[str, list[float]] = {n: [] for n in names}
    start, i = time.perf_counter(), 0
    while i < runs or time.perf_counter() - start < seconds:
        for n in (names if i % 2 == 0 else reversed(names)):
            t0 = time.perf_counter_ns()
            sessions[n].run(None, feeds[n])
            times[n].append((time.perf_counter_ns() - t0) / 1e6)
        i += 1
    out = {n: summarize(t) for n, t in times.items()}
    for n in names:
        out[n]["throughput_per_s"] = batch * 1000.0 / out[n]["mean_ms"]
        if keep_times:
            out[n]["times_ms"] = times[n]
    return out
