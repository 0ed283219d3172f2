"""Validation of sparse arrays read from disk, before scipy or onnxruntime touches them.

scipy and onnxruntime trust CSR/BSR index arrays: an index past the end reads or writes outside the
buffer (a crash, or silently wrong weights). Every layer of a sparse weights file is checked here
against its manifest entry: dtypes, shapes, a monotone indptr that starts at 0 and ends at nnz,
column (block) indices in range and strictly increasing within each row, blocks that tile the
shape. A violation is a one-line UserError naming the file and the tensor.
"""
from __future__ import annotations

import math

import numpy as np

from compress.errors import UserError

MAX_ELEMENTS = 2**28  # the largest weight we rebuild densely (1 GiB of float32)


def layer_shape(info: dict, where: str) -> tuple[tuple[int, ...], tuple[int, int]]:
    """The weight's shape and its 2-D view (out, rest), checked to be sane."""
    shape = info.get("shape")
    if (not isinstance(shape, list) or not 1 <= len(shape) <= 5
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape)):
        raise UserError(f"{where}: shape {shape!r} is not a list of 1 to 5 positive integers")
    rows, size = shape[0], math.prod(shape)  # Python integers: a crafted 10**30 must not overflow
    if size > MAX_ELEMENTS:
        raise UserError(f"{where}: shape {shape} has {size} elements, more than {MAX_ELEMENTS}")
    return tuple(shape), (rows, size // rows)


def _array(arrays: dict, key: str, dtype, ndim: int, where: str) -> np.ndarray:
    a = arrays.get(key)
    if a is None:
        raise UserError(f"{where}: tensor {key!r} is missing")
    if a.dtype != dtype or a.ndim != ndim:
        raise UserError(f"{where}: tensor {key!r} is {a.dtype} with {a.ndim} dimension(s), expected "
                        f"{np.dtype(dtype)} with {ndim}")
    return a


def check_compressed(indptr: np.ndarray, indices: np.ndarray, n_rows: int, n_cols: int, where: str,
                     name: str) -> None:
    """A CSR (or BSR, counting blocks) index structure of n_rows × n_cols."""
    if len(indptr) != n_rows + 1:
        raise UserError(f"{where}: tensor {name}.indptr has {len(indptr)} entries, expected {n_rows + 1}")
    nnz = len(indices)
    if indptr[0] != 0 or indptr[-1] != nnz or np.any(np.diff(indptr) < 0):
        raise UserError(f"{where}: tensor {name}.indptr is not monotone from 0 to nnz = {nnz}")
    if nnz and (indices.min() < 0 or indices.max() >= n_cols):
        raise UserError(f"{where}: tensor {name}.indices holds a column outside [0, {n_cols})")
    if nnz > 1:
        row_start = np.zeros(nnz, dtype=bool)
        row_start[indptr[:-1][indptr[:-1] < nnz]] = True
        if np.any(np.diff(indices)[~row_start[1:]] <= 0):
            raise UserError(f"{where}: tensor {name}.indices is not strictly increasing within a row")


def check_layer_set(declared: dict, shapes: dict[str, list[int]], where: str) -> None:
    """The manifest describes exactly the model's pruned layers, each with the model's weight shape."""
    if set(declared) != set(shapes):
        odd = sorted(set(declared) ^ set(shapes))[0]
        raise UserError(f"{where}: layer {odd!r} is {'missing' if odd in shapes else 'not a pruned layer of the model'}"
                        f" (expected exactly: {', '.join(shapes)})")
    for name, shape in shapes.items():
        info = declared[name]
        if not isinstance(info, dict) or info.get("shape") != list(shape):
            got = info.get("shape") if isinstance(info, dict) else info
            raise UserError(f"{where}: layer {name!r} has shape {got!r}, the model's weight is {list(shape)}")


def check_tensor_set(layers: dict, arrays: dict[str, np.ndarray], where: str) -> None:
    """The file holds exactly the tensors its manifest's layers name, no more."""
    expected = {f"{n}.{part}" for n, info in layers.items()
                for part in (("data",) if isinstance(info, dict) and info.get("format") == "dense"
                             else ("data", "indices", "indptr"))}
    extra = sorted(set(arrays) - expected)
    if extra:
        raise UserError(f"{where}: tensor {extra[0]!r} is not described by manifest.json")


def check_values(name: str, info: dict, data: np.ndarray, where: str) -> None:
    """Finite values, and as many nonzeros as the manifest declares (when it declares them)."""
    if not np.isfinite(data).all():
        raise UserError(f"{where}: tensor {name}.data holds NaN or infinite values")
    if info.get("dtype", "float32") != "float32":
        raise UserError(f"{where}: dtype {info.get('dtype')!r} in manifest.json, the file holds float32")
    nnz = info.get("nnz")
    if nnz is not None and nnz != int(np.count_nonzero(data)):
        raise UserError(f"{where}: manifest.json declares nnz {nnz!r}, tensor {name}.data holds "
                        f"{int(np.count_nonzero(data))} nonzero values")


def check_layer(name: str, info: dict, arrays: dict[str, np.ndarray], where: str) -> tuple[int, int]:
    """Check one layer's arrays against its manifest entry; returns its 2-D shape."""
    where = f"{where}: layer {name!r}"
    if not isinstance(info, dict):
        raise UserError(f"{where}: manifest entry is not an object")
    shape, (rows, cols) = layer_shape(info, where)
    if "dense_bytes" in info and info["dense_bytes"] != rows * cols * 4:  # a shape edited without its sizes
        raise UserError(f"{where}: manifest.json declares dense_bytes {info['dense_bytes']!r}, shape {list(shape)} "
                        f"holds {rows * cols * 4}")
    fmt = info.get("format")
    if fmt == "dense":
        data = _array(arrays, f"{name}.data", np.float32, 2, where)
        if data.shape != (rows, cols):
            raise UserError(f"{where}: tensor {name}.data has shape {list(data.shape)}, expected {[rows, cols]}")
        check_values(name, info, data, where)
        return rows, cols
    indices = _array(arrays, f"{name}.indices", np.int32, 1, where)
    indptr = _array(arrays, f"{name}.indptr", np.int64, 1, where)
    if fmt == "csr":
        data = _array(arrays, f"{name}.data", np.float32, 1, where)
        if len(data) != len(indices):
            raise UserError(f"{where}: tensor {name}.data has {len(data)} values for {len(indices)} indices")
        check_compressed(indptr, indices, rows, cols, where, name)
    elif fmt == "bsr":
        block = info.get("block")
        if (not isinstance(block, list) or len(block) != 2 or not all(isinstance(b, int) and b >= 1 for b in block)
                or rows % block[0] or cols % block[1]):
            raise UserError(f"{where}: block {block!r} does not tile the {rows}x{cols} weight")
        data = _array(arrays, f"{name}.data", np.float32, 3, where)
        if data.shape != (len(indices), *block):
            raise UserError(f"{where}: tensor {name}.data has shape {list(data.shape)}, expected "
                            f"{[len(indices), *block]}")
        check_compressed(indptr, indices, rows // block[0], cols // block[1], where, name)
    else:
        raise UserError(f"{where}: format {fmt!r}, expected csr, bsr or dense")
    check_values(name, info, data, where)
    return rows, cols
