import gzip

import torch

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
    assert len(data.train) == 3000 and len(data.test) == 1000  # the committed subset: 300 / 100 per digit
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10
    assert np.bincount(data.train.y.numpy()).tolist() == [300] * 10
    assert np.bincount(data.test.y.numpy()).tolist() == [100] * 10
    raw = read_idx(mnist_root / "t10k-images-idx3-ubyte.gz")
    assert raw.dtype == np.uint8 and raw.max() == 255 and 0.1 < (raw > 0).mean() < 0.3  # real digits, not noise
    limited = load_data("mnist", str(mnist_root), train_limit=500, test_limit=100)
    assert len(limited.train) == 500 and len(limited.test) == 100
    assert np.bincount(limited.test.y.numpy()).tolist() == [10] * 10  # stratified, not the first 100 files


def test_limits_are_seeded_class_stratified_subsets():
    a, b = (load_data("digits", seed=3, train_limit=25, test_limit=20) for _ in range(2))
    assert sorted(np.bincount(a.train.y.numpy()).tolist()) == [2] * 5 + [3] * 5
    assert np.bincount(a.test.y.numpy()).tolist() == [2] * 10
    assert torch.equal(a.train.x, b.train.x)  # same seed, same subset
    other = load_data("digits", seed=4, train_limit=25, test_limit=20)
    assert not torch.equal(a.train.x, other.train.x)
    with pytest.raises(UserError, match=r"data.test_limit = 9: digits test split: class \d has no samples"):
        load_data("digits", test_limit=9)


def test_mnist_plain_files_and_bad_files(tmp_path, mnist_root):
    for name in ("t10k-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
        raw = gzip.open(mnist_root / f"{name}.gz").read()
        (tmp_path / name).write_bytes(raw)  # uncompressed copies must load too
    assert read_idx(tmp_path / "t10k-labels-idx1-ubyte").shape == (1000,)
    assert np.array_equal(read_idx(tmp_path / "t10k-images-idx3-ubyte"), read_idx(mnist_root / "t10k-images-idx3-ubyte.gz"))
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


def cifar_records(digits, n, label_bytes):
    """Real digit images (8x8, grey) placed into the CIFAR binary record layout (32x32 RGB)."""
    from sklearn.datasets import load_digits
    bunch = load_digits()
    imgs = (bunch.images[:n] * 255 / 16).astype(np.uint8)
    big = np.zeros((n, 3, 32, 32), dtype=np.uint8)
    big[:, :, 12:20, 12:20] = imgs[:, None]
    labels = bunch.target[:n].astype(np.uint8)
    head = np.stack([labels] * label_bytes, 1)
    return np.concatenate([head, big.reshape(n, -1)], 1).tobytes(), big, labels


def test_cifar10_binary_folder_and_archive(tmp_path, digits):
    import tarfile
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    expected = []
    for i, name in enumerate([f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"]):
        blob, imgs, labels = cifar_records(digits, 20 + i, 1)
        (folder / name).write_bytes(blob)
        expected.append(labels)
    data = load_data("cifar10", str(tmp_path))
    assert data.input_shape == (3, 32, 32) and len(data.train) == sum(range(20, 25)) and len(data.test) == 25
    assert data.test.y.tolist() == expected[-1].tolist()
    archive = tmp_path / "cifar-10-binary.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-bin")
    again = load_data("cifar10", str(archive))
    assert torch.equal(again.train.x, data.train.x)
    (folder / "test_batch.bin").write_bytes(b"\x01" * 100)
    with pytest.raises(UserError, match="not a whole number of 3073-byte"):
        load_data("cifar10", str(folder))


def test_cifar100_uses_fine_labels_and_refuses_pickles(tmp_path, digits):
    blob, _, _ = cifar_records(digits, 100, 2)
    records = np.frombuffer(blob, np.uint8).reshape(100, -1).copy()
    fine = (np.arange(100) * 37) % 100  # every one of the 100 classes once, not in label order
    records[:, 0], records[:, 1] = fine // 5, fine  # coarse label first, then the fine one
    (tmp_path / "train.bin").write_bytes(records.tobytes())
    (tmp_path / "test.bin").write_bytes(records.tobytes())
    data = load_data("cifar100", str(tmp_path))
    assert data.train.y.tolist() == fine.tolist()
    (tmp_path / "test.bin").write_bytes(records[:30].tobytes())  # a test split with 70 classes missing
    with pytest.raises(UserError, match="test split: class .* has no samples \\(70 of 100"):
        load_data("cifar100", str(tmp_path))
    pickled = tmp_path / "py"
    pickled.mkdir()
    (pickled / "data_batch_1").write_bytes(b"\x80\x04pickle")
    with pytest.raises(UserError, match="does not unpickle"):
        load_data("cifar10", str(pickled))


def test_crop_flip_is_deterministic_and_shape_preserving():
    from compress.data import crop_flip
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8).repeat(8, 1, 1, 1)
    a = crop_flip(x, torch.Generator().manual_seed(1))
    b = crop_flip(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.equal(a, x)
    flipped_only = crop_flip(x, torch.Generator().manual_seed(2), pad=0)
    kinds = ["same" if torch.equal(o, i) else "mirror" if torch.equal(o, i.flip(2)) else "other"
             for o, i in zip(flipped_only, x)]
    assert "other" not in kinds and {"same", "mirror"} <= set(kinds)


def test_calibration_samples_are_stratified_too(digits):
    from compress.data import Split
    from compress.subsets import sample

    order = torch.argsort(digits.train.y, stable=True)  # class-ordered, as an image folder lists them
    ordered = Split(digits.train.x[order], digits.train.y[order])
    picked = sample(ordered, 30, seed=0)
    assert np.bincount(picked.y.numpy()).tolist() == [3] * 10  # the first 30 would all be class 0
