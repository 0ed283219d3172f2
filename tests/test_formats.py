import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compress.errors import UserError
from compress.pruners.base import exact_zeros
from deploy.formats import load_sparse, save_sparse, storage_report, to_csr


def sparse_tensor(shape, density, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    return exact_zeros(w * (torch.rand(shape, generator=g) < density))


def bits(t):
    return t.contiguous().view(torch.int32)


def test_round_trip_is_bit_exact_for_conv_and_linear(tmp_path):
    weights = {"conv": sparse_tensor((16, 6, 5, 5), 0.1, 0), "fc": sparse_tensor((120, 400), 0.05, 1),
               "empty": torch.zeros(4, 3), "full": sparse_tensor((3, 7), 1.0, 2)}
    manifest = save_sparse(tmp_path, weights, model_id="lenet5", choice="csr")
    back = load_sparse(tmp_path, model_id="lenet5")
    for name, w in weights.items():
        assert back[name].shape == w.shape and torch.equal(bits(back[name]), bits(w))
    fc = manifest["layers"]["fc"]
    assert fc["nnz"] == int((weights["fc"] != 0).sum())
    assert fc["csr_bytes"] < fc["dense_bytes"] / 5 and fc["format"] == "csr"  # 95% zeros: CSR is much smaller
    assert to_csr(weights["conv"]).shape == (16, 150)  # conv flattened to (out, in·kh·kw)


@settings(max_examples=40, deadline=None)
@given(rows=st.sampled_from([1, 4, 7, 16, 32]), cols=st.sampled_from([1, 4, 8, 12, 48]), density=st.floats(0, 1),
       seed=st.integers(0, 10_000), choice=st.sampled_from(["best", "csr", "bsr"]))
def test_round_trip_property(tmp_path_factory, rows, cols, density, seed, choice):
    folder = tmp_path_factory.mktemp("sp")
    w = sparse_tensor((rows, cols), density, seed)
    save_sparse(folder, {"w": w}, choice=choice)
    assert torch.equal(bits(load_sparse(folder)["w"]), bits(w))


def test_block_sparse_weights_choose_bsr(tmp_path):
    g = torch.Generator().manual_seed(0)
    blocks = (torch.rand(16, 16, generator=g) < 0.1).float()  # 90% of 8x8 blocks are zero
    w = exact_zeros(torch.randn(128, 128, generator=g) * blocks.repeat_interleave(8, 0).repeat_interleave(8, 1))
    report = storage_report(w)
    assert report["best_bsr"] in ("8x8", "16x16") and report["bsr_bytes"]["8x8"] < report["csr_bytes"]
    manifest = save_sparse(tmp_path, {"w": w})
    layer = manifest["layers"]["w"]
    assert layer["format"] == "bsr" and layer["stored_bytes"] < layer["csr_bytes"]
    assert torch.equal(bits(load_sparse(tmp_path)["w"]), bits(w))
    scattered = sparse_tensor((128, 128), 0.1, 3)  # unstructured: CSR wins
    assert save_sparse(tmp_path / "s", {"w": scattered})["layers"]["w"]["format"] == "csr"


def test_foreign_or_mismatched_files_are_clear_errors(tmp_path):
    save_sparse(tmp_path, {"w": torch.eye(3)}, model_id="mlp")
    with pytest.raises(UserError, match="written for model 'mlp', not 'lenet5'"):
        load_sparse(tmp_path, model_id="lenet5")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["version"] = 99
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="version 99"):
        load_sparse(tmp_path)
    (tmp_path / "manifest.json").write_text("{broken")
    with pytest.raises(UserError, match="cannot read sparse-format manifest"):
        load_sparse(tmp_path)
    save_sparse(tmp_path, {"w": torch.eye(3)})
    (tmp_path / "weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(UserError, match="does not match the sha256 in manifest.json"):
        load_sparse(tmp_path)


def test_best_stores_a_layer_dense_when_that_is_smallest_and_sparse_otherwise(tmp_path):
    full, sparse = sparse_tensor((6, 5), 1.0, 3), sparse_tensor((64, 64), 0.05, 4)
    manifest = save_sparse(tmp_path, {"full": full, "sparse": sparse}, choice="best")
    layers = manifest["layers"]
    assert layers["full"]["format"] == "dense" and layers["full"]["stored_bytes"] == full.numel() * 4
    assert layers["sparse"]["format"] in ("csr", "bsr") and layers["sparse"]["stored_bytes"] < 64 * 64 * 4 / 5
    for name, w in (("full", full), ("sparse", sparse)):
        info = layers[name]
        assert info["nnz"] == int((w != 0).sum())
        assert info["compression"] == info["dense_bytes"] / info["stored_bytes"]
    back = load_sparse(tmp_path)
    assert torch.equal(bits(back["full"]), bits(full)) and torch.equal(bits(back["sparse"]), bits(sparse))


def test_a_manifest_whose_layers_are_not_an_object_is_named(tmp_path):
    save_sparse(tmp_path, {"fc": sparse_tensor((4, 4), 0.5, 5)})
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "layers": ["fc"]}))
    with pytest.raises(UserError) as e:
        load_sparse(tmp_path)
    assert str(e.value) == f"{tmp_path / 'manifest.json'}: 'layers' is not an object"


def test_csr_bytes_are_data_indices_and_indptr_and_a_forced_format_is_kept(tmp_path):
    w = sparse_tensor((9, 10), 1.0, 6)  # dense: "best" would store it dense, "csr" must not
    info = save_sparse(tmp_path, {"w": w}, choice="csr")["layers"]["w"]
    assert info["format"] == "csr"
    # float32 data, int32 indices, int64 indptr (sizes whose bits overlap, so a sum is not an xor)
    assert info["stored_bytes"] == info["csr_bytes"] == 90 * 4 + 90 * 4 + 10 * 8


def test_an_unreadable_weights_file_is_one_clear_error(tmp_path):
    from compress import atomic
    save_sparse(tmp_path, {"fc": sparse_tensor((4, 4), 0.5, 7)})
    path = tmp_path / "weights.safetensors"
    path.write_bytes(b"\xff" * 64)  # not a safetensors file, but its hash is in the manifest
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "weights_sha256": atomic.sha256_file(path)}))
    with pytest.raises(UserError, match=r"weights.safetensors: cannot read \("):
        load_sparse(tmp_path)
