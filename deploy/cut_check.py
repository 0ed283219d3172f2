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
from .latency import compare_latency
from .runtime import open_model


def _batch(sample: torch.Tensor, batch: int):
    """`batch` rows of `sample` (repeated when it has fewer) as numpy."""
    x = sample[:batch].numpy()
    return x.repeat((batch + len(x) - 1) // len(x), 0)[:batch] if len(x) < batch else x


def cut_speedup(before: nn.Module, after: nn.Module, sample: torch.Tensor, batch: int = 1, threads: int = 1,
                runs: int = 200) -> dict:
    """{"before_ms", "after_ms", "ratio"}: p50 latency of both models (ratio = after / before)."""
    with tempfile.TemporaryDirectory() as work:
        paths = {}
        for name, model in (("before", before), ("after", after)):
            paths[name] = Path(work) / f"{name}.onnx"
            export_onnx(model, sample, paths[name])
        sessions = {name: open_model(path, threads=threads) for name, path in paths.items()}
        lat = compare_latency(sessions, _batch(sample, batch), warmup=20, runs=runs)
    return {"before_ms": lat["before"]["p50_ms"], "after_ms": lat["after"]["p50_ms"],
            "ratio": lat["after"]["p50_ms"] / lat["before"]["p50_ms"], "batch": batch, "threads": threads}


def latency_ratio_measure(sample: torch.Tensor, batch: int = 1, threads: int = 1, runs: int = 100):
    """A `latency_ratio(model, cut)` for the pruners' latency targets: cut's p50 / model's, timed side by
    side as above. A search times many cuts of one model, so that model is exported once."""
    work = tempfile.TemporaryDirectory()
    reference: dict = {}
    x = _batch(sample, batch)

    def latency_ratio(model: nn.Module, cut: nn.Module) -> float:
        if reference.get("model") is not model:
            export_onnx(model.eval(), sample, Path(work.name) / "model.onnx")
            reference.update(model=model, session=open_model(Path(work.name) / "model.onnx", threads=threads))
        path = Path(work.name) / "cut.onnx"
        export_onnx(cut.eval(), sample, path)
        lat = compare_latency({"model": reference["session"], "cut": open_model(path, threads=threads)}, x,
                              warmup=20, runs=runs)
        return lat["cut"]["p50_ms"] / lat["model"]["p50_ms"]

    latency_ratio.work = work  # the folder lives as long as the function
    return latency_ratio
