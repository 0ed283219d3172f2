import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compress.errors import UserError
from compress.pruners.base import exact_zeros
from deploy.formats import load_csr, save_csr, to_csr


def sparse_tensor(shape, density, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    return exact_zeros(w * (torch.rand(shape, generator=g) < density))


def bits(t):
    return t.contiguous().view(torch.int32)


def test_round_trip_is_bit_exact_for_conv_and_linear(tmp_path):
    weights = {"conv": sparse_tensor((16, 6, 5, 5), 0.1, 0), "fc": sparse_tensor((120, 400), 0.05, 1),
               "empty": torch.zeros(4, 3), "full": sparse_tensor((3, 7), 1.0, 2)}
    manifest = save_csr(tmp_path, weights, model_id="lenet5")
    back = load_csr(tmp_path, model_id="lenet5")
    for name, w in weights.items():
        assert back[name].shape == w.shape and torch.equal(bits(back[name]), bits(w))
    fc = manifest["layers"]["fc"]
    assert fc["nnz"] == int((weights["fc"] != 0).sum())
    assert fc["csr_bytes"] < fc["dense_bytes"] / 5  # 95% zeros: CSR is much smaller
    assert to_csr(weights["conv"]).shape == (16, 150)  # conv flattened to (out, in·kh·kw)


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 20), cols=st.integers(1, 20), density=st.floats(0, 1), seed=st.integers(0, 10_000))
def test_round_trip_property(tmp_path_factory, rows, cols, density, seed):
    folder = tmp_path_factory.mktemp("csr")
    w = sparse_tensor((rows, cols), density, seed)
    save_csr(folder, {"w": w})
    assert torch.equal(bits(load_csr(folder)["w"]), bits(w))


def test_foreign_or_mismatched_files_are_clear_errors(tmp_path):
    save_csr(tmp_path, {"w": torch.eye(3)}, model_id="mlp")
    with pytest.raises(UserError, match="written for model 'mlp', not 'lenet5'"):
        load_csr(tmp_path, model_id="lenet5")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["version"] = 99
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="version 99"):
        load_csr(tmp_path)
    (tmp_path / "manifest.json").write_text("{broken")
    with pytest.raises(UserError, match="cannot read sparse-format manifest"):
        load_csr(tmp_path)
    save_csr(tmp_path, {"w": torch.eye(3)})
    (tmp_path / "weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(UserError, match="cannot read"):
        load_csr(tmp_path)
