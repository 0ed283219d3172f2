"""Optional int8 variants through onnxruntime.quantization: dynamic, or static with calibration data.

Static int8 is mixed where that is faster: a Conv that onnxruntime's x86 CPU provider has no fast
int8 kernel for stays float (see `slow_int8_convs`), and when that leaves a choice, both models are
timed side by side and the faster one is kept."""
from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize_dynamic, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from compress import atomic

from .latency import Timer, compare_latency, make_session


class _Batches(CalibrationDataReader):
    def __init__(self, input_name: str, x: np.ndarray, batch: int = 32):
        self._feeds = iter([{input_name: np.ascontiguousarray(x[i:i + batch])} for i in range(0, len(x), batch)])

    def get_next(self):
        return next(self._feeds, None)


def fast_int8_conv(out_channels: int, in_channels_per_group: int, groups: int) -> bool:
    """Does onnxruntime's x86 CPU provider run this Conv with its fast int8 kernel? That kernel
    (MLAS's symmetric quantized convolution: uint8 activations, int8 weights with zero point 0) takes
    a plain Conv whose input channels are a multiple of 4 and whose output channels are at least 16
    and a multiple of 8, or a depthwise Conv over a multiple of 16 channels. Any other Conv falls back
    to a generic int8 path that ran slower than fp32 on this project's machine (ResNet-20 with
    8-channel stages: int8 x1.04-1.12 the fp32 latency at batch 1; with the stem and the 8-channel
    convs left float, x0.87). A rule, not a measurement: torchvision's resnet18 ran faster with its
    3-channel stem in int8 than in float, which is why `quantize` times both when it can."""
    if groups > 1:
        return in_channels_per_group == 1 and out_channels == groups and groups % 16 == 0
    return in_channels_per_group % 4 == 0 and out_channels >= 16 and out_channels % 8 == 0


def slow_int8_convs(model: onnx.ModelProto) -> list[str]:
    """Names of the Conv nodes without a fast int8 kernel (`fast_int8_conv`); a Conv whose weight is
    not an initializer is left to the quantizer."""
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    slow = []
    for node in model.graph.node:
        weight = shapes.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        if weight is None or len(weight) < 3:
            continue
        groups = next((a.i for a in node.attribute if a.name == "group"), 1)
        if not fast_int8_conv(weight[0], weight[1], groups):
            slow.append(node.name)
    return slow


def _time_pair(paths: dict[str, Path], x: np.ndarray, threads: int, timer: Timer = compare_latency) -> dict[str, float]:
    sessions = {name: make_session(path, threads=threads) for name, path in paths.items()}
    lat = timer(sessions, x, warmup=10, runs=50 if len(x) > 1 else 200)
    return {name: lat[name]["p50_ms"] for name in paths}


def quantize(src: str | Path, dst: str | Path, mode: str, calibration: np.ndarray | None = None,
             input_name: str = "input", timing: tuple[int, int] | None = None, timer: Timer = compare_latency) -> dict:
    """Write an int8 copy of `src`: 'dynamic' (weights int8, activations at run time) or 'static'
    (activations calibrated on `calibration`, QDQ format). Static activations are uint8 with int8
    weights (U8S8), onnxruntime's fast path on x86-64: on this machine's AVX-512 VNNI CPU, ResNet-20
    ran at x0.47-0.53 of fp32 with U8S8 and x1.32-1.35 with int8 activations (S8S8).
    Static: Convs without a fast int8 kernel stay float. With `timing` = (batch, threads), the model
    quantized throughout is timed beside that mixed one on calibration rows and the faster is written;
    the returned dict says which nodes stayed float and what was measured."""
    dst = Path(dst)
    logging.getLogger("onnxruntime.quantization").setLevel(logging.ERROR)
    info: dict = {"mode": mode}
    with tempfile.TemporaryDirectory() as work, atomic.atomic_path(dst) as tmp:
        work = Path(work)
        clean = work / "model.onnx"
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            # onnxruntime's own pre-processing (symbolic shape inference, graph optimisation), as its docs advise
            quant_pre_process(str(src), str(clean))
        if mode == "dynamic":
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                quantize_dynamic(str(clean), str(tmp), weight_type=QuantType.QInt8)
        elif mode == "static":
            if calibration is None:
                raise ValueError("static quantisation needs calibration data")
            slow = slow_int8_convs(onnx.load(str(clean)))
            candidates = {"mixed": slow, "all": []} if slow and timing else {"mixed": slow}
            paths = {}
            for name, exclude in candidates.items():
                paths[name] = work / f"{name}.onnx"
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                    quantize_static(str(clean), str(paths[name]), _Batches(input_name, calibration),
                                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                    nodes_to_exclude=exclude)
            chosen = "mixed"
            if len(paths) > 1:
                batch, threads = timing
                x = np.ascontiguousarray(np.resize(calibration, (batch, *calibration.shape[1:])))
                measured = _time_pair(paths, x, threads, timer)
                chosen = min(measured, key=measured.get)
                info["timed"] = {"batch": batch, "threads": threads,
                                 **{f"{name}_p50_ms": ms for name, ms in measured.items()}}
            shutil.copyfile(paths[chosen], tmp)
            info["float_nodes"] = candidates[chosen]
        else:
            raise ValueError(f"unknown quantisation mode {mode!r}")
    return {"path": dst.name, "bytes": dst.stat().st_size, **info}
