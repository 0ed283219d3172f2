"""Accuracy and agreement of ONNX models in onnxruntime against their PyTorch originals."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from compress.errors import UserError
from .sections import ValidateConfig

from .latency import Timer, compare_latency
from .runtime import open_model

__all__ = ["ValidateConfig", "validate", "array_batches", "onnx_logits", "torch_logits", "check_input"]  # the section dataclass is re-exported for callers


def onnx_logits(session, x: np.ndarray, batch_size: int) -> np.ndarray:
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i:i + batch_size]})[0]
                           for i in range(0, len(x), batch_size)])


@torch.no_grad()
def torch_logits(model: nn.Module, x: np.ndarray, batch_size: int) -> np.ndarray:
    model.eval()
    return np.concatenate([model(torch.from_numpy(x[i:i + batch_size])).numpy()
                           for i in range(0, len(x), batch_size)])


def check_input(session, x: np.ndarray, path: Path) -> None:
    """Raise a one-line error when the data does not fit the model's declared input."""
    declared = session.get_inputs()[0].shape
    if len(declared) != x.ndim or any(isinstance(d, int) and d != s for d, s in zip(declared[1:], x.shape[1:])):
        raise UserError(f"{path}: model input shape {declared} does not match the data's {list(x.shape)}")


def array_batches(x: np.ndarray, y: np.ndarray, batch_size: int) -> Callable[[], Iterator]:
    """`validate`'s batches from arrays held in memory."""
    return lambda: ((x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size))


def validate(onnx_paths: dict[str, Path], torch_models: dict[str, nn.Module],
             batches: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]], cfg: ValidateConfig,
             timer: Timer = compare_latency) -> dict:
    """Accuracy (onnxruntime and PyTorch), ONNX↔PyTorch agreement and side-by-side latency per model.

    `batches()` yields (x, y) numpy batches of the test set once: every model sees each batch in turn,
    so a test set larger than memory is read (and decoded) only once.
    """
    sessions = {name: open_model(path, threads=cfg.threads) for name, path in onnx_paths.items()}
    totals = {name: {"correct": 0, "torch_correct": 0, "agree": 0, "max": 0.0, "sum": 0.0, "n": 0, "size": 0}
              for name in sessions}
    latency_input = None
    for x, y in batches():
        x = np.ascontiguousarray(x, dtype=np.float32)
        if latency_input is None:
            for name, path in onnx_paths.items():
                check_input(sessions[name], x, path)
            latency_input = x[:cfg.latency_batch_size]
        torch_out: dict[int, np.ndarray] = {}  # variants of one PyTorch model share its outputs
        for name, session in sessions.items():
            model = torch_models[name]
            if id(model) not in torch_out:
                torch_out[id(model)] = torch_logits(model, x, cfg.batch_size)
            ort_out, pt_out = onnx_logits(session, x, cfg.batch_size), torch_out[id(model)]
            t = totals[name]
            t["correct"] += int((ort_out.argmax(1) == y).sum())
            t["torch_correct"] += int((pt_out.argmax(1) == y).sum())
            t["agree"] += int((ort_out.argmax(1) == pt_out.argmax(1)).sum())
            t["max"] = max(t["max"], float(np.abs(ort_out - pt_out).max()))
            t["sum"] += float(np.abs(ort_out - pt_out).sum())
            t["n"] += len(y)
            t["size"] += ort_out.size
    if latency_input is None:
        raise UserError("validate: the test split is empty")
    out: dict = {name: {"accuracy": t["correct"] / t["n"], "torch_accuracy": t["torch_correct"] / t["n"],
                        "agreement_with_torch": t["agree"] / t["n"], "max_abs_diff_vs_torch": t["max"],
                        "mean_abs_diff_vs_torch": t["sum"] / max(t["size"], 1), "samples": t["n"]}
                 for name, t in totals.items()}
    batch = np.ascontiguousarray(latency_input)
    lat = timer(sessions, batch, warmup=cfg.warmup_runs, runs=cfg.runs)
    latency = {**lat, "batch_size": int(len(batch)), "threads": cfg.threads,
               "interleaved": True, "warmup_runs": cfg.warmup_runs}
    if "dense" in lat:
        for name in lat:
            if name != "dense":
                lat[name]["ratio_vs_dense"] = lat[name]["p50_ms"] / lat["dense"]["p50_ms"]
        if "sparse" in lat:
            latency["ratio"] = lat["sparse"]["ratio_vs_dense"]
    out["latency"] = latency
    return out
