"""deploy.validate on a model whose every output is known: onnxruntime's logits are PyTorch's plus a
fixed shift on one class, so accuracy, agreement and the differences have hand-computed values."""
import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper
from torch import nn

from compress.errors import UserError
from conftest import fixed_timer
from deploy.validate import ValidateConfig, array_batches, validate

SHIFT = 0.75


def linear_onnx(path, layer: nn.Linear, shift_class: int) -> None:
    """`layer` as ONNX (MatMul + Add), with SHIFT added to one class's bias."""
    bias = layer.bias.detach().numpy().copy()
    bias[shift_class] += SHIFT
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["logits"])],
        "linear", [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["N", layer.in_features])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(layer.weight.detach().numpy().T.copy(), "w"), numpy_helper.from_array(bias, "b")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


def test_accuracy_agreement_and_differences_are_the_hand_computed_ones(tmp_path):
    torch.manual_seed(0)
    layer = nn.Linear(300, 3)  # a width past the small integers Python caches
    x = np.random.default_rng(0).standard_normal((7, 300)).astype(np.float32)  # batches of 3, run 2 at a time
    logits = layer(torch.from_numpy(x)).detach().numpy()
    y = logits.argmax(1)
    y[0] = (y[0] + 1) % 3  # PyTorch wrong on sample 0
    linear_onnx(tmp_path / "m.onnx", layer, shift_class=2)
    shifted = logits.copy()
    shifted[:, 2] += SHIFT
    out = validate({"sparse": tmp_path / "m.onnx"}, {"sparse": layer}, array_batches(x, y, 3),
                   ValidateConfig(batch_size=2, runs=1, warmup_runs=0), timer=fixed_timer({}))
    got = out["sparse"]
    assert got["samples"] == 7
    assert got["torch_accuracy"] == pytest.approx(6 / 7)
    assert got["accuracy"] == pytest.approx(float((shifted.argmax(1) == y).mean()))
    agreement = float((shifted.argmax(1) == logits.argmax(1)).mean())
    assert 0 < agreement < 1 and got["agreement_with_torch"] == pytest.approx(agreement)
    assert got["max_abs_diff_vs_torch"] == pytest.approx(SHIFT, abs=1e-5)
    assert got["mean_abs_diff_vs_torch"] == pytest.approx(SHIFT / 3, abs=1e-5)  # one class of three shifted


def test_data_that_does_not_fit_the_declared_input_is_refused(tmp_path):
    layer = nn.Linear(4, 3)
    linear_onnx(tmp_path / "m.onnx", layer, shift_class=0)
    for x in (np.zeros((2, 5), np.float32), np.zeros((2, 4, 1), np.float32), np.zeros(2, np.float32)):
        with pytest.raises(UserError, match="does not match the data's"):
            validate({"sparse": tmp_path / "m.onnx"}, {"sparse": layer}, array_batches(x, np.zeros(2, int), 2),
                     ValidateConfig(runs=1, warmup_runs=0), timer=fixed_timer({}))
