"""Keep a channel cut only if it is faster: the model before and after the cut, exported to ONNX
and timed side by side in onnxruntime (interleaved, p50) at the batch size and threads asked for.
Removing channels that happened to be empty can leave widths a runtime runs badly (measured:
torchvision resnet18 at x2.08 the dense latency), so a cut has to earn its place."""
from __future__ import annotations

import contextlib
import io
import math
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .export import export_onnx
from .latency import Timer, compare_latency, summarize
from .quantize import quantize
from .runtime import open_model

PRECISIONS = ("fp32", "int8")


def _batch(sample: torch.Tensor, batch: int):
    """`batch` rows of `sample` (repeated when it has fewer) as numpy."""
    x = sample[:batch].numpy()
    return x.repeat((batch + len(x) - 1) // len(x), 0)[:batch] if len(x) < batch else x


def _exported(model: nn.Module, sample: torch.Tensor, path: Path, precision: str, batch: int = 1,
              threads: int = 1, timer: Timer = compare_latency) -> Path:
    """`model` as the ONNX file that gets timed: fp32, or static int8 (the export stage's recipe,
    calibrated on `sample`, its float-or-int8 choice timed at `batch` and `threads`; timing barely
    depends on the calibration)."""
    export_onnx(model.eval(), sample, path)
    if precision == "fp32":
        return path
    if precision != "int8":
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    quantize(path, path.with_suffix(".int8.onnx"), "static", sample.numpy(), timing=(batch, threads), timer=timer)
    return path.with_suffix(".int8.onnx")


def _exported_for_timing(model: nn.Module, sample: torch.Tensor, path: Path) -> Path:
    """fp32 `model` as ONNX for timing only, by torch's TorchScript exporter: 5-6x faster than the
    torch.export-based one that writes the shipped file (timm resnet18: 12 s vs 59-80 s on 2 busy
    cores), and every model a decision compares is exported the same way. Falls back to the shipped
    exporter where the TorchScript one cannot export the model."""
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(model.eval(), (sample[:2],), str(path), dynamo=False, opset_version=18,
                              input_names=["input"], dynamic_axes={"input": {0: "batch"}})
        return path
    except Exception:  # an op the old exporter does not know
        return _exported(model, sample, path, "fp32")


def median_interval(ratios: list[float]) -> tuple[float, float]:
    """A ~95% confidence interval of the median of paired ratios (order statistics, sign test)."""
    r, n = sorted(ratios), len(ratios)
    k = max(0, math.floor(n / 2 - 0.98 * math.sqrt(n)))
    return r[k], r[n - 1 - k]


def time_cuts(before: nn.Module, cuts: dict[str, nn.Module], sample: torch.Tensor, batch: int = 1,
              threads: int = 1, runs: int = 200, precision: str = "fp32", timer: Timer = compare_latency,
              decide_at: float | None = None, min_runs: int = 30, progress: bool = False) -> dict:
    """p50 latency of `before` and of every cut, all exported at `precision` ('fp32' or 'int8') and
    timed side by side by `timer`: {"before_ms", "cuts": {name: {"ms", "ratio"}}} (ratio = cut / before).

    With `decide_at` (a ratio), timing stops after `min_runs` rounds once every cut's ratio is on one
    side of it with ~95% confidence (the median of paired per-round ratios), else after `runs`;
    fp32 models are then exported with the faster TorchScript exporter (see `_exported_for_timing`)."""
    models = {"before": before, **{f"cut-{name}": cut for name, cut in cuts.items()}}
    bar = tqdm(total=len(models) + 1, desc="freeze: latency check", disable=not progress, leave=False)
    with tempfile.TemporaryDirectory() as work:
        paths = {}
        for key, model in models.items():
            path = Path(work) / f"{key}.onnx"
            fast = decide_at is not None and precision == "fp32"
            paths[key] = _exported_for_timing(model, sample, path) if fast else \
                _exported(model, sample, path, precision, batch, threads, timer)
            bar.update()
        sessions = {key: open_model(path, threads=threads) for key, path in paths.items()}
        x = _batch(sample, batch)
        if decide_at is None:
            lat = timer(sessions, x, warmup=20, runs=runs)
            rounds = runs
        else:
            lat, rounds = _time_until_decided(sessions, x, decide_at, min_runs, runs, timer)
        bar.update()
    bar.close()
    before_ms = lat["before"]["p50_ms"]
    return {"before_ms": before_ms, "batch": batch, "threads": threads, "precision": precision, "rounds": rounds,
            "cuts": {name: {"ms": lat[f"cut-{name}"]["p50_ms"], "ratio": lat[f"cut-{name}"]["p50_ms"] / before_ms}
                     for name in cuts}}


def _time_until_decided(sessions: dict, x: np.ndarray, decide_at: float, min_runs: int,
                        max_runs: int, timer: Timer = compare_latency) -> tuple[dict, int]:
    """Interleaved rounds in chunks until every cut's median paired ratio to "before" is clearly on one
    side of `decide_at`, or `max_runs` rounds; the summaries of all rounds, and how many there were."""
    times: dict[str, list[float]] = {n: [] for n in sessions}
    warmup = 20
    while True:
        chunk = timer(sessions, x, warmup=warmup, runs=min_runs, keep_times=True)
        warmup = 0
        for n in sessions:  # a timer that keeps no times (a test's fixed one): its p50, every round
            times[n] += chunk[n].get("times_ms") or [chunk[n]["p50_ms"]] * min_runs
        rounds = len(times["before"])
        decided = True
        for n in sessions:
            if n == "before":
                continue
            lo, hi = median_interval([c / b for c, b in zip(times[n], times["before"])])
            decided &= hi < decide_at or lo > decide_at
        if decided or rounds >= max_runs:
            return {n: summarize(t) for n, t in times.items()}, rounds


def cut_speedup(before: nn.Module, after: nn.Module, sample: torch.Tensor, batch: int = 1, threads: int = 1,
                runs: int = 200, precision: str = "fp32") -> dict:
    """{"before_ms", "after_ms", "ratio"}: p50 latency of both models (ratio = after / before), each
    exported at `precision` ('fp32' or 'int8')."""
    timed = time_cuts(before, {"after": after}, sample, batch, threads, runs, precision)
    after_ms = timed.pop("cuts")["after"]
    return {**timed, "after_ms": after_ms["ms"], "ratio": after_ms["ratio"]}


def latency_ratio_measure(sample: torch.Tensor, batch: int = 1, threads: int = 1, runs: int = 100,
                          precision: str = "fp32", timer: Timer = compare_latency):
    """A `latency_ratio(model, cut)` for the pruners' latency targets: cut's p50 / model's, timed side by
    side as above, both at `precision`. A search times many cuts of one model, so that model is
    exported once."""
    work = tempfile.TemporaryDirectory()
    reference: dict = {}
    x = _batch(sample, batch)

    def exported(model: nn.Module, path: Path) -> Path:  # fp32: the faster exporter, as the freeze check
        return _exported_for_timing(model, sample, path) if precision == "fp32" else \
            _exported(model, sample, path, precision, batch, threads, timer)

    def latency_ratio(model: nn.Module, cut: nn.Module) -> float:
        if reference.get("model") is not model:
            path = exported(model, Path(work.name) / "model.onnx")
            reference.update(model=model, session=open_model(path, threads=threads))
        path = exported(cut, Path(work.name) / "cut.onnx")
        lat = timer({"model": reference["session"], "cut": open_model(path, threads=threads)}, x,
                    warmup=20, runs=runs)
        return lat["cut"]["p50_ms"] / lat["model"]["p50_ms"]

    latency_ratio.work = work  # the folder lives as long as the function
    return latency_ratio
