"""Every decision taken on a measured latency, driven by fixed timings (tests/conftest.fixed_timer):
the decision must follow the timings, whatever the machine's load. Real timing is in tools/bench_*."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from conftest import fixed_timer, pruned_mlp
from compress.models import LeNet5
from deploy.cut_check import latency_ratio_measure
from deploy.export import export_onnx
from deploy.formats import save_sparse
from deploy.onnx_variants import make_sparse_compute
from deploy.quantize import quantize, slow_int8_convs
from deploy.runtime import open_model
from deploy.validate import ValidateConfig, array_batches, validate


@pytest.fixture(scope="module")
def sparse_mlp(digits, tmp_path_factory):
    """A 80%-sparse digits MLP (64 → 48 → 32 → 10) as sparse.onnx and convert's CSR folder."""
    folder = tmp_path_factory.mktemp("mlp")
    model, layers = pruned_mlp(digits, [48, 32], 0.8)
    export_onnx(model, digits.test.x[:16], folder / "sparse.onnx")
    save_sparse(folder / "csr", {n: model.get_submodule(n).weight.detach() for n in layers}, model_id="mlp")
    return model, layers, folder


@pytest.mark.parametrize("sparse_faster_for", [set(), {64}, {64, 48, 32}])
def test_sparse_compute_runs_a_layer_sparse_exactly_where_it_timed_faster(sparse_mlp, digits, tmp_path,
                                                                          sparse_faster_for):
    model, layers, folder = sparse_mlp

    def ms(name, session, x):  # layers are told apart by their input width (64, 48, 32)
        return 0.5 if name == "sparse" and x.shape[1] in sparse_faster_for else 1.0

    timer = fixed_timer(ms)
    manifest = make_sparse_compute(folder / "sparse.onnx", folder / "csr", tmp_path / "sc", min_sparsity=0.5,
                                   timer=timer)
    assert len(timer.calls) == 3 and all(sorted(c) == ["dense", "sparse"] for c in timer.calls)
    chosen = {v["shape"][1] for v in manifest["layers"].values()}
    assert chosen == sparse_faster_for
    graph = onnx.load(str(tmp_path / "sc" / "model.onnx")).graph
    assert sum(n.op_type == "SparseToDenseMatMul" for n in graph.node) == len(sparse_faster_for)
    session = open_model(tmp_path / "sc")
    x = digits.test.x[:32]
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        assert np.abs(got - model(x).numpy()).max() < 1e-4  # whatever was chosen computes the same


@pytest.mark.parametrize("faster", ["all", "mixed"])
def test_static_int8_writes_the_variant_that_timed_faster(digits, tmp_path, faster):
    torch.manual_seed(0)
    path = tmp_path / "lenet.onnx"
    export_onnx(LeNet5(digits.input_shape, digits.num_classes).eval(), digits.test.x[:16], path)
    timer = fixed_timer({faster: 0.5, "all" if faster == "mixed" else "mixed": 1.0})
    info = quantize(path, tmp_path / "q.onnx", "static", digits.train.x[:64].numpy(), timing=(1, 1), timer=timer)
    assert timer.calls == [["mixed", "all"]]
    slow = slow_int8_convs(onnx.load(str(path)))
    assert slow  # LeNet-5's 1-channel stem has no fast int8 kernel: there is a choice to make
    assert info["float_nodes"] == ([] if faster == "all" else slow)
    assert info["timed"][f"{faster}_p50_ms"] == 0.5
    graph = onnx.load(str(tmp_path / "q.onnx")).graph
    fp32 = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    float_convs = [n for n in graph.node if n.op_type == "Conv" and n.input[1] in fp32]  # not through DQ
    assert (len(float_convs) > 0) == (faster == "mixed")  # the file written is the one chosen


def test_latency_targets_use_the_timers_ratio_and_export_the_reference_once(digits):
    torch.manual_seed(0)
    model, cut = LeNet5(digits.input_shape, 10).eval(), LeNet5(digits.input_shape, 10).eval()
    timer = fixed_timer({"model": 2.0, "cut": 0.5})
    ratio = latency_ratio_measure(digits.test.x[:4], batch=2, timer=timer)
    assert ratio(model, cut) == 0.25 and ratio(model, cut) == 0.25
    assert timer.calls == [["model", "cut"]] * 2


def test_validate_reports_the_timers_latency_and_ratio(digits, sparse_mlp, tmp_path):
    model, _, folder = sparse_mlp
    dense_model, _ = pruned_mlp(digits, [48, 32], 0.0)
    export_onnx(dense_model, digits.test.x[:16], tmp_path / "dense.onnx")
    x, y = digits.test.x.numpy(), digits.test.y.numpy()
    res = validate({"dense": tmp_path / "dense.onnx", "sparse": folder / "sparse.onnx"},
                   {"dense": dense_model, "sparse": model}, array_batches(x, y, 100), ValidateConfig(runs=7),
                   timer=fixed_timer({"dense": 2.0, "sparse": 1.5}))
    lat = res["latency"]
    assert lat["dense"]["p50_ms"] == 2.0 and lat["sparse"]["p50_ms"] == 1.5 and lat["ratio"] == 0.75
    assert lat["dense"]["runs"] == 7
