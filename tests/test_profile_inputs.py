"""`profile` on any valid ONNX: several inputs, integer inputs, none, run folders, hostile graphs;
bounded by --seconds, one line and exit 2 for what it cannot time."""
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import cli

V = helper.make_tensor_value_info


def save(path, nodes, inputs, outputs, inits=()):
    model = helper.make_model(helper.make_graph(nodes, path.stem, inputs, outputs, initializer=list(inits)),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def relu(path, width=5):
    return save(path, [helper.make_node("Relu", ["x"], ["y"])], [V("x", TensorProto.FLOAT, ["N", width])],
                [V("y", TensorProto.FLOAT, ["N", width])])


def several_inputs(path):
    """A float input and integer indices into a table (a Gather): both fed, of their declared types."""
    table = numpy_helper.from_array(np.random.default_rng(0).random((4, 3), dtype=np.float32), "table")
    return save(path, [helper.make_node("Gather", ["table", "idx"], ["g"]), helper.make_node("Add", ["g", "x"], ["y"])],
                [V("x", TensorProto.FLOAT, ["N", 2, 3]), V("idx", TensorProto.INT64, ["N", 2])],
                [V("y", TensorProto.FLOAT, ["N", 2, 3])], [table])


FAST = ["--seconds", "0.02", "--warmup", "0", "--batch", "1,4"]


def test_several_and_integer_inputs_are_fed_their_declared_types(tmp_path):
    res = cli("profile", several_inputs(tmp_path / "m.onnx"), *FAST)
    assert res.returncode == 0, res.stderr
    assert "batch    4 threads 1  model" in res.stdout and "Gather" in res.stdout


def test_a_run_folder_profiles_every_variant_against_dense(tmp_path):
    run = tmp_path / "run"
    (run / "onnx").mkdir(parents=True)
    (run / "config.toml").write_text("config_version = 1\n")
    relu(run / "onnx" / "sparse.onnx")
    relu(run / "onnx" / "dense.onnx")
    for target in (run, run / "onnx"):
        res = cli("profile", target, *FAST, "--json", tmp_path / "p.json")
        assert res.returncode == 0, res.stderr
        assert "dense    p50" in res.stdout and "sparse   p50" in res.stdout and "vs dense" in res.stdout
    import json
    assert json.loads((tmp_path / "p.json").read_text())["baseline"] == "dense"


def test_models_it_cannot_time_are_one_line(tmp_path):
    no_input = save(tmp_path / "none.onnx", [helper.make_node(
        "Constant", [], ["y"], value=numpy_helper.from_array(np.ones(3, np.float32)))], [], [V("y", TensorProto.FLOAT, [3])])
    shape = numpy_helper.from_array(np.array([1 << 20, 1 << 20, 1 << 10], np.int64), "shape")  # 4 TiB of float32
    expand = save(tmp_path / "expand.onnx", [helper.make_node("Expand", ["x", "shape"], ["y"])],
                  [V("x", TensorProto.FLOAT, [1])], [V("y", TensorProto.FLOAT, [1 << 20, 1 << 20, 1 << 10])], [shape])
    cases = [
        (["profile", no_input, *FAST], "declares no inputs"),
        (["profile", expand, *FAST], "expand.onnx: inference failed"),
        (["profile", relu(tmp_path / "a.onnx"), "--baseline", relu(tmp_path / "b.onnx", 7), *FAST], "not comparable"),
        (["profile", relu(tmp_path / "c.onnx"), "--seconds", "nan"], "--seconds must be in (0, 3600.0]"),
        (["profile", tmp_path / "empty-folder"], "no .onnx file or sparse-compute folder"),
    ]
    (tmp_path / "empty-folder").mkdir()
    for argv, words in cases:
        res = cli(*argv)
        assert res.returncode == 2 and words in res.stderr and res.stderr.count("\n") == 1, (argv, res.stderr)


def test_an_endless_inference_is_abandoned_within_the_time_limit(tmp_path, monkeypatch):
    import deploy.profile

    monkeypatch.setattr(deploy.profile, "START_SECONDS", 4.0)
    body = helper.make_graph(
        [helper.make_node("Identity", ["c"], ["c_out"]), helper.make_node("Identity", ["v"], ["v_out"])], "body",
        [V("i", TensorProto.INT64, []), V("c", TensorProto.BOOL, []), V("v", TensorProto.FLOAT, [1])],
        [V("c_out", TensorProto.BOOL, []), V("v_out", TensorProto.FLOAT, [1])])
    loop = save(tmp_path / "loop.onnx", [helper.make_node("Loop", ["trip", "cond", "x"], ["y"], body=body)],
                [V("x", TensorProto.FLOAT, [1])], [V("y", TensorProto.FLOAT, [1])],
                [numpy_helper.from_array(np.array(1 << 62, np.int64), "trip"),
                 numpy_helper.from_array(np.array(True), "cond")])
    t0 = time.monotonic()
    res = cli("profile", loop, "--seconds", "0.1", "--warmup", "0", "--batch", "1")
    assert time.monotonic() - t0 < 10
    assert res.returncode == 2 and "did not finish within 4 s" in res.stderr and res.stderr.count("\n") == 1
