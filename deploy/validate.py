"""Accuracy and agreement of ONNX models in onnxruntime against their PyTorch originals."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from compress.errors import UserError
from .sections import ValidateConfig

from .latency import compare_latency
from .runtime import open_model

__all__ = ["ValidateConfig", "validate", "onnx_logits", "torch_logits", "check_input"]  # the section dataclass is re-exported for callers


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


def validate(onnx_paths: dict[str, Path], torch_models: dict[str, nn.Module], x: np.ndarray, y: np.ndarray,
             cfg: ValidateConfig) -> dict:
    """Accuracy (onnxruntime and PyTorch), ONNX↔PyTorch agreement and side-by-side latency per model."""
    out: dict = {}
    sessions = {}
    for name, path in onnx_paths.items():
        sessions[name] = open_model(path, threads=cfg.threads)
        check_input(sessions[name], x, path)
        ort_out = onnx_logits(sessions[name], x, cfg.batch_size)
        pt_out = torch_logits(torch_models[name], x, cfg.batch_size)
        out[name] = {
            "accuracy": float((ort_out.argmax(1) == y).mean()),
            "torch_accuracy": float((pt_out.argmax(1) == y).mean()),
            "agreement_with_torch": float((ort_out.argmax(1) == pt_out.argmax(1)).mean()),
            "max_abs_diff_vs_torch": float(np.abs(ort_out - pt_out).max()),
            "mean_abs_diff_vs_torch": float(np.abs(ort_out - pt_out).mean()),
            "samples": int(len(y)),
        }
    batch = np.ascontiguousarray(x[:cfg.latency_batch_size])
    lat = compare_latency(sessions, batch, warmup=cfg.warmup_runs, runs=cfg.runs)
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
