"""int8 where the runtime has a fast kernel: Convs without one stay float, the faster of the mixed and
the all-int8 model is kept (timed side by side), and latency timing can measure int8 models."""
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from conftest import REPO
from deploy.cut_check import latency_ratio_measure
from deploy.export import export_onnx
from deploy.pipeline.cache import fingerprint
from deploy.pipeline.run import Run
from deploy.pipeline.stage import BY_NAME
from deploy.config import load_config
from deploy.quantize import quantize, slow_int8_convs


class Convs(nn.Module):
    """No fast int8 kernel: the stem (1 input channel), an 8-output conv, a depthwise conv over 8
    channels. Fast: 8 -> 16 convs, a depthwise conv over 16 channels."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.wide = nn.Conv2d(8, 16, 3, padding=1)
        self.dw16 = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.narrow = nn.Conv2d(16, 8, 3, padding=1)
        self.dw8 = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.out = nn.Conv2d(8, 16, 1)

    def forward(self, x):
        for conv in (self.stem, self.wide, self.dw16, self.narrow, self.dw8, self.out):
            x = conv(x).relu()
        return x.mean((2, 3))


def _exported(tmp_path: Path) -> tuple[Path, np.ndarray]:
    torch.manual_seed(0)
    x = torch.rand(64, 1, 12, 12)
    export_onnx(Convs().eval(), x, tmp_path / "model.onnx")
    return tmp_path / "model.onnx", x.numpy()


def _weight_shapes(model: onnx.ModelProto, nodes: list[str]) -> list[list[int]]:
    init = {t.name: list(t.dims) for t in model.graph.initializer}
    by_name = {n.name: n for n in model.graph.node}
    return [init[by_name[n].input[1]] for n in nodes]


def test_convs_without_a_fast_int8_kernel_are_named(tmp_path):
    path, _ = _exported(tmp_path)
    model = onnx.load(str(path))
    slow = slow_int8_convs(model)
    assert sorted(s[:2] for s in _weight_shapes(model, slow)) == [[8, 1], [8, 1], [8, 16]]


def test_static_int8_keeps_slow_convs_float_and_the_faster_model(tmp_path):
    path, x = _exported(tmp_path)
    info = quantize(path, tmp_path / "int8.onnx", "static", x, timing=(8, 1))
    timed = info["timed"]
    assert timed["batch"] == 8 and timed["mixed_p50_ms"] > 0 and timed["all_p50_ms"] > 0
    kept_mixed = timed["mixed_p50_ms"] <= timed["all_p50_ms"]
    assert (len(info["float_nodes"]) == 3) == kept_mixed  # the faster one was written
    graph = onnx.load(str(tmp_path / "int8.onnx")).graph
    produced_by = {o: n.op_type for n in graph.node for o in n.output}
    float_convs = [n for n in graph.node if n.op_type == "Conv" and produced_by.get(n.input[1]) != "DequantizeLinear"]
    assert len(float_convs) == len(info["float_nodes"])
    # and it computes what the float model computes, to int8 precision
    want = ort.InferenceSession(str(path)).run(None, {"input": x})[0]
    got = ort.InferenceSession(str(tmp_path / "int8.onnx")).run(None, {"input": x})[0]
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()
    # without timing the mixed model is written
    info = quantize(path, tmp_path / "mixed.onnx", "static", x)
    assert len(info["float_nodes"]) == 3 and "timed" not in info


def test_latency_timing_can_measure_the_int8_models(tmp_path):
    torch.manual_seed(0)
    wide, narrow = nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 32, 3)), \
        nn.Sequential(nn.Conv2d(1, 16, 3), nn.ReLU(), nn.Conv2d(16, 32, 3))
    measure = latency_ratio_measure(torch.rand(4, 1, 16, 16), batch=2, runs=10, precision="int8")
    assert measure(wide, narrow) > 0
    timed = onnx.load(str(Path(measure.work.name) / "cut.int8.onnx")).graph
    assert any(n.op_type == "QuantizeLinear" for n in timed.node)


def test_latency_timing_settings_are_part_of_the_train_fingerprint(tmp_path):
    def train_fingerprint(*overrides: str) -> str:
        cfg = load_config(REPO / "configs" / "quickstart.toml", list(overrides))
        return fingerprint(Run(tmp_path, cfg, progress=False), BY_NAME["train"], [])

    base = train_fingerprint()
    assert train_fingerprint("freeze.min_speedup=2") == base  # the cut check runs after training
    for changed in ("freeze.latency_batch_size=4", "freeze.latency_threads=2", "freeze.latency_precision='int8'"):
        assert train_fingerprint(changed) != base, changed
