import gzip

import numpy as np
import pytest

from compress.data import load_data, read_idx
from compress.errors import UserError


def test_digits_split_is_deterministic_and_stratified(digits):
    again = load_data("digits", seed=0)
    assert np.array_equal(digits.test.y.numpy(), again.test.y.numpy())
    assert digits.input_shape == (1, 8, 8) and digits.num_classes == 10
    assert len(digits.train) + len(digits.test) == 1797
    counts = np.bincount(digits.test.y.numpy(), minlength=10)
    assert counts.min() >= 30  # every class held out in proportion
    other = load_data("digits", seed=1)
    assert not np.array_equal(digits.test.y.numpy(), other.test.y.numpy())


def test_mnist_idx_files(mnist_root):
    data = load_data("mnist", str(mnist_root))
    assert len(data.train) == 60000 and len(data.test) == 10000
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10
    assert np.bincount(data.test.y.numpy()).tolist()[:3] == [980, 1135, 1032]  # the official test split
    limited = load_data("mnist", str(mnist_root), train_limit=500, test_limit=100)
    assert len(limited.train) == 500 and len(limited.test) == 100


def test_mnist_plain_files_and_bad_files(tmp_path, mnist_root):
    for name in ("t10k-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
        raw = gzip.open(mnist_root / f"{name}.gz").read()
        (tmp_path / name).write_bytes(raw)  # uncompressed copies must load too
    assert read_idx(tmp_path / "t10k-labels-idx1-ubyte").shape == (10000,)
    truncated = tmp_path / "t10k-images-idx3-ubyte"
    truncated.write_bytes(truncated.read_bytes()[:5000])
    with pytest.raises(UserError, match="truncated"):
        read_idx(truncated)
    (tmp_path / "junk").write_bytes(b"not an idx file")
    with pytest.raises(UserError, match="magic"):
        read_idx(tmp_path / "junk")


def test_missing_folder_and_files(tmp_path):
    with pytest.raises(UserError, match="folder not found"):
        load_data("mnist", str(tmp_path / "nope"))
    with pytest.raises(UserError, match=r"missing train-images-idx3-ubyte"):
        load_data("mnist", str(tmp_path))
    with pytest.raises(UserError, match="needs the folder"):
        load_data("mnist", "")
