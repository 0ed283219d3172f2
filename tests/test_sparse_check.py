"""deploy/sparse_check.py on hand-made arrays: every rule it states refuses the file that breaks it
(with a one-line UserError naming the tensor), and accepts the file that keeps it by one."""
import json

import numpy as np
import pytest

from compress.errors import UserError
from deploy.sparse_check import (MAX_ELEMENTS, check_compressed, check_layer, check_layer_set, check_tensor_set,
                                 layer_shape)


def csr(rows: int, cols: int, per_row: list[list[int]]) -> tuple[dict, dict]:
    """A float32 CSR layer (manifest entry, arrays) with ones at the given columns of each row."""
    indices = np.array([c for r in per_row for c in r], dtype=np.int32)
    indptr = np.cumsum([0] + [len(r) for r in per_row]).astype(np.int64)
    info = {"format": "csr", "shape": [rows, cols], "nnz": len(indices), "dense_bytes": rows * cols * 4}
    return info, {"w.data": np.ones(len(indices), np.float32), "w.indices": indices, "w.indptr": indptr}


def test_a_valid_csr_layer_passes_and_its_shape_is_returned():
    info, arrays = csr(3, 4, [[0, 3], [], [1]])
    assert check_layer("w", info, arrays, "f") == (3, 4)


@pytest.mark.parametrize("per_row, message", [
    ([[0, 4]], r"column outside \[0, 4\)"),          # the last column + 1
    ([[0, 9]], r"column outside \[0, 4\)"),          # well past it
    ([[2, 2]], "not strictly increasing"),           # a repeated column
    ([[3, 1]], "not strictly increasing"),
])
def test_column_indices_must_be_in_range_and_increase_within_a_row(per_row, message):
    info, arrays = csr(1, 4, per_row)
    with pytest.raises(UserError, match=message):
        check_layer("w", info, arrays, "f")


def test_indptr_length_is_checked_for_large_row_counts():
    n = 300  # beyond the small integers Python caches: `is not` would not compare them
    indptr = np.zeros(n + 1, dtype=np.int64)
    check_compressed(indptr, np.zeros(0, np.int32), n, 5, "f", "w")
    with pytest.raises(UserError, match="has 300 entries, expected 301"):
        check_compressed(indptr[:-1], np.zeros(0, np.int32), n, 5, "f", "w")


def test_more_values_than_indices_is_refused():
    info, arrays = csr(2, 4, [[0], [1]])
    arrays["w.data"] = np.ones(3, np.float32)
    with pytest.raises(UserError, match="3 values for 2 indices"):
        check_layer("w", info, arrays, "f")


def test_shapes_must_be_positive_and_not_past_the_element_limit():
    with pytest.raises(UserError, match="positive integers"):
        layer_shape({"shape": [4, 0]}, "f")
    assert layer_shape({"shape": [MAX_ELEMENTS // 2, 2]}, "f")[1] == (MAX_ELEMENTS // 2, 2)
    with pytest.raises(UserError, match="more than 268435456"):
        layer_shape({"shape": [MAX_ELEMENTS // 2 + 1, 2]}, "f")
    assert MAX_ELEMENTS == 2**28  # 1 GiB of float32: the limit the reliability page promises


def test_dense_bytes_must_match_the_shape():
    info, arrays = csr(2, 4, [[0], [1]])
    info["dense_bytes"] = 2 * 4 * 4 + 4
    with pytest.raises(UserError, match="declares dense_bytes 36, shape \\[2, 4\\] holds 32"):
        check_layer("w", info, arrays, "f")


def bsr(rows: int, cols: int, block: list[int], blocks: list[list[int]]) -> tuple[dict, dict]:
    indices = np.array([c for r in blocks for c in r], dtype=np.int32)
    indptr = np.cumsum([0] + [len(r) for r in blocks]).astype(np.int64)
    info = {"format": "bsr", "shape": [rows, cols], "block": block}
    return info, {"w.data": np.ones((len(indices), *block), np.float32), "w.indices": indices, "w.indptr": indptr}


def test_bsr_blocks_must_tile_the_weight_and_index_block_columns():
    info, arrays = bsr(4, 8, [2, 4], [[0, 1], [1]])
    assert check_layer("w", info, arrays, "f") == (4, 8)
    for rows, cols in ((5, 8), (4, 6)):  # either side not a multiple of the block
        info, arrays = bsr(rows, cols, [2, 4], [[0], [0]] if rows == 4 else [[0], [0], [0]])
        with pytest.raises(UserError, match="does not tile"):
            check_layer("w", info, arrays, "f")
    info, arrays = bsr(4, 8, [2, 4], [[0, 2], [1]])  # block column 2 of 2 block columns
    with pytest.raises(UserError, match=r"column outside \[0, 2\)"):
        check_layer("w", info, arrays, "f")


def test_the_layer_set_names_the_missing_and_the_extra_layer():
    shapes = {"a": [2, 3], "b": [4, 5]}
    with pytest.raises(UserError, match="layer 'b' is missing"):
        check_layer_set({"a": {"shape": [2, 3]}}, shapes, "f")
    with pytest.raises(UserError, match="layer 'c' is not a pruned layer"):
        check_layer_set({"a": {"shape": [2, 3]}, "b": {"shape": [4, 5]}, "c": {"shape": [1]}}, shapes, "f")
    with pytest.raises(UserError, match=r"layer 'b' has shape \[5, 4\], the model's weight is \[4, 5\]"):
        check_layer_set({"a": {"shape": [2, 3]}, "b": {"shape": [5, 4]}}, shapes, "f")


def test_a_dense_layer_from_a_json_manifest_may_not_carry_index_tensors():
    layers = json.loads('{"w": {"format": "dense", "shape": [2, 2]}}')  # strings as a manifest file gives them
    check_tensor_set(layers, {"w.data": np.zeros((2, 2), np.float32)}, "f")
    with pytest.raises(UserError, match="'w.indices' is not described"):
        check_tensor_set(layers, {"w.data": np.zeros((2, 2), np.float32), "w.indices": np.zeros(1, np.int32)}, "f")
