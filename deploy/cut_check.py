"""Keep a channel cut only if it is faster: the model before and after the cut, exported to ONNX
and timed side by side in onnxruntime (interleaved, p50) at the batch size and threads asked for.
Removing channels that happened to be empty can leave widths a runtime runs badly (measured:
torchvision resnet18 at x2.08 the dense latency), so a cut has to earn its place."""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn

from .export import export_onnx
from .latency import Timer, compare_latency
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


def time_cuts(before: nn.Module, cuts: dict[str, nn.Module], sample: torch.Tensor, batch: int = 1,
              threads: int = 1, runs: int = 200, precision: str = "fp32", timer: Timer = compare_latency) -> dict:
    """p50 latency of `before` and of every cut, all exported at `precision` ('fp32' or 'int8') and
    timed side by side by `timer`: {"before_ms", "cuts": {name: {"ms", "ratio"}}} (ratio = cut / before)."""
    with tempfile.TemporaryDirectory() as work:
        models = {"before": before, **{f"cut-{name}": cut for name, cut in cuts.items()}}
        paths = {key: _exported(model, sample, Path(work) / f"{key}.onnx", precision, batch, threads, timer)
                 for key, model in models.items()}
        sessions = {key: open_model(path, threads=threads) for key, path in paths.items()}
        lat = timer(sessions, _batch(sample, batch), warmup=20, runs=runs)
    before_ms = lat["before"]["p50_ms"]
    return {"before_ms": before_ms, "batch": batch, "threads": threads, "precision": precision,
            "cuts": {name: {"ms": lat[f"cut-{name}"]["p50_ms"], "ratio": lat[f"cut-{name}"]["p50_ms"] / before_ms}
                     for name in cuts}}


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

    def latency_ratio(model: nn.Module, cut: nn.Module) -> float:
        if reference.get("model") is not model:
            path = _exported(model, sample, Path(work.name) / "model.onnx", precision, batch, threads, timer)
            reference.update(model=model, session=open_model(path, threads=threads))
        path = _exported(cut, sample, Path(work.name) / "cut.onnx", precision, batch, threads, timer)
        lat = timer({"model": reference["session"], "cut": open_model(path, threads=threads)}, x,
                    warmup=20, runs=runs)
        return lat["cut"]["p50_ms"] / lat["model"]["p50_ms"]

    latency_ratio.work = work  # the folder lives as long as the function
    return latency_ratio
