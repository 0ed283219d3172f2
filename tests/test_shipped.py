"""The sparsity a run ships is counted from the shipped files, which must agree with each other and
with what freeze claims (deploy/shipped.py); expected figures are counted here by hand."""
import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file

from compress.errors import UserError
from deploy.formats import save_sparse
from deploy.shipped import onnx_nonzeros, shipped_sparsity, stored_bytes


def weights() -> dict[str, torch.Tensor]:
    """fc1: 4x6 with 5 nonzeros (a dense-ish layer), fc2: 3x4 with 2 nonzeros."""
    fc1 = torch.zeros(4, 6)
    fc1[0, 0], fc1[1, 2], fc1[2, 5], fc1[3, 1], fc1[3, 4] = 1.5, -2.0, 0.25, 3.0, -0.5
    fc2 = torch.zeros(3, 4)
    fc2[0, 3], fc2[2, 0] = 0.75, -1.25
    return {"fc1": fc1, "fc2": fc2}


def write_onnx(path, tensors: dict[str, np.ndarray]) -> None:
    """A model whose initializers are `tensors` (names 'LAYER.weight') plus one that is no layer's."""
    inits = [numpy_helper.from_array(v, name) for name, v in tensors.items()]
    inits.append(numpy_helper.from_array(np.ones(4, np.float32), "fc1.bias"))
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], inits)
    onnx.save(helper.make_model(graph), str(path))


@pytest.fixture
def run_dir(tmp_path):
    w = weights()
    (tmp_path / "onnx").mkdir()
    (tmp_path / "frozen").mkdir()
    save_sparse(tmp_path / "sparse", w)
    write_onnx(tmp_path / "onnx" / "sparse.onnx", {f"{n}.weight": t.numpy() for n, t in w.items()})
    return tmp_path


SHAPES = {"fc1": [4, 6], "fc2": [3, 4]}


def test_counts_zeros_against_the_uncut_size(run_dir):
    # fc1 had 8 input features before a channel cut left 6: 32 entries, 5 nonzero
    got = shipped_sparsity(run_dir, SHAPES, {"fc1": 32, "fc2": 12}, claimed={})
    assert got["per_layer"] == {"fc1": pytest.approx(27 / 32), "fc2": pytest.approx(10 / 12)}
    assert got["global"] == pytest.approx(1 - 7 / 44)
    assert "weights.safetensors" in got["counted_from"]


def test_stored_bytes_are_the_layers_tensors_in_the_file(run_dir):
    arrays = load_file(str(run_dir / "sparse" / "weights.safetensors"))
    want = {n: sum(a.nbytes for k, a in arrays.items() if k.rpartition(".")[0] == n) for n in SHAPES}
    assert stored_bytes(run_dir / "sparse" / "weights.safetensors", list(SHAPES)) == want
    assert want["fc2"] > 0 and want["fc1"] != want["fc2"]
    assert shipped_sparsity(run_dir, SHAPES, {"fc1": 24, "fc2": 12}, {})["stored_bytes"] == want


def test_onnx_nonzeros_reads_only_the_layers_weights(run_dir):
    assert onnx_nonzeros(run_dir / "onnx" / "sparse.onnx", ["fc1", "fc2"]) == {"fc1": 5, "fc2": 2}
    assert onnx_nonzeros(run_dir / "onnx" / "sparse.onnx", ["fc2"]) == {"fc2": 2}


@pytest.mark.parametrize("layer, at, value, found, stored", [("fc2", (1, 1), 9.0, 3, 2),   # one more
                                                             ("fc1", (0, 0), 0.0, 4, 5)])  # one fewer
def test_an_onnx_file_with_other_nonzeros_is_named(run_dir, layer, at, value, found, stored):
    w = {f"{n}.weight": t.numpy().copy() for n, t in weights().items()}
    w[f"{layer}.weight"][at] = value
    write_onnx(run_dir / "onnx" / "sparse.onnx", w)
    with pytest.raises(UserError, match=rf"sparse\.onnx: layer '{layer}' has {found} nonzero weights but .* "
                                        rf"stores {stored}"):
        shipped_sparsity(run_dir, SHAPES, {"fc1": 24, "fc2": 12}, {})


def test_a_claim_of_more_zeros_than_ship_is_refused_and_an_exact_claim_is_not(run_dir):
    sizes = {"fc1": 24, "fc2": 12}
    assert shipped_sparsity(run_dir, SHAPES, sizes, {"fc1": 19 / 24, "fc2": 10 / 12})["per_layer"]["fc1"] == \
        pytest.approx(19 / 24)
    with pytest.raises(UserError, match=r"sparsity\.json: claims 83\.33% zeros in layer 'fc1' but .* ships 79\.17%"):
        shipped_sparsity(run_dir, SHAPES, sizes, {"fc1": 20 / 24})


def test_csr_values_are_checked_against_the_frozen_weights(run_dir):
    frozen = {n: t.numpy() for n, t in weights().items()}
    shipped_sparsity(run_dir, SHAPES, {"fc1": 24, "fc2": 12}, {}, frozen=frozen)  # the same weights pass
    moved = {**frozen, "fc2": frozen["fc2"].copy()}
    moved["fc2"][0, 3], moved["fc2"][0, 2] = 0.0, 0.75  # same count and value, another column
    changed = {**frozen, "fc1": frozen["fc1"] * np.float32(1.001)}  # same places, other values
    for bad, layer in ((moved, "fc2"), (changed, "fc1")):
        with pytest.raises(UserError, match=rf"layer '{layer}' does not hold the weights of .*sparse\.safetensors"):
            shipped_sparsity(run_dir, SHAPES, {"fc1": 24, "fc2": 12}, {}, frozen=bad)


def test_a_tampered_sparse_file_is_refused_before_counting(run_dir):
    manifest = json.loads((run_dir / "sparse" / "manifest.json").read_text())
    with pytest.raises(UserError, match="shape"):  # the model's shapes are not the file's
        shipped_sparsity(run_dir, {"fc1": [4, 7], "fc2": [3, 4]}, {"fc1": 28, "fc2": 12}, {})
    (run_dir / "sparse" / "weights.safetensors").write_bytes(b"\0" * 64)
    with pytest.raises(UserError, match="sha256"):
        shipped_sparsity(run_dir, SHAPES, {"fc1": 24, "fc2": 12}, {})
    assert manifest["layers"]["fc1"]["nnz"] == 5


@pytest.mark.parametrize("shape", [(1, 1), (20, 30)])
def test_counts_of_one_and_of_many_weights(tmp_path, shape):
    """A one-weight layer (global sparsity 0 exactly) and a layer of 600 nonzeros (counts past the
    small integers Python keeps once)."""
    w = {"only": torch.arange(1, shape[0] * shape[1] + 1, dtype=torch.float32).view(shape)}
    (tmp_path / "onnx").mkdir()
    save_sparse(tmp_path / "sparse", w)
    write_onnx(tmp_path / "onnx" / "sparse.onnx", {"only.weight": w["only"].numpy()})
    got = shipped_sparsity(tmp_path, {"only": list(shape)}, {"only": shape[0] * shape[1]}, {})
    assert got["global"] == 0.0 and got["per_layer"] == {"only": 0.0}
