"""Datasets by name, loaded from local files into tensors (no download needed).

- digits: scikit-learn's bundled 8x8 handwritten digits (1,797 real images), split
  deterministically into train/test.
- mnist / fashion-mnist: the four standard IDX files (.gz or plain) in a folder.
- cifar10 / cifar100: the binary distribution (data_batch_*.bin / train.bin ...), as a folder or
  the original .tar.gz. The pickled "python version" is refused: unpickling runs code.
- imagefolder: ROOT/train/CLASS/*.png|jpg and ROOT/test/CLASS/... (or val/), decoded lazily per
  batch (imagefolder.py), so it may be far larger than memory.
- 'package.module:factory': a user's torch Datasets.

Every split is a torch Dataset of (image [C, H, W] float32, label); loader.py batches them.
"""
from __future__ import annotations

import gzip
import struct
import tarfile
from pathlib import Path

import numpy as np
import torch

from .dataset import Data, Split
from .errors import UserError
from .config.data import CLASSES, DATASETS, DataConfig
from .loader import batches, crop_flip, first
from .userdata import load_factory_data
from .limits import read_bytes
from .subsets import limit_splits

__all__ = ["Data", "Split", "load_data", "load_config_data", "read_idx", "batches", "crop_flip", "first"]

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


MAX_IDX_BYTES = 1 << 31  # 2 GiB of pixels: far more than any IDX data set


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (gzipped or plain) into a uint8 array. The header is read and checked
    first, then exactly the bytes it announces: a file that inflates to more is refused unread."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] != 0x08:
                raise UserError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
            dims_raw = f.read(4 * head[3])
            if len(dims_raw) < 4 * head[3]:
                raise UserError(f"{path}: truncated IDX header")
            dims = struct.unpack(f">{head[3]}I", dims_raw)
            expected = int(np.prod(dims, dtype=np.int64))
            if expected > MAX_IDX_BYTES:
                raise UserError(f"{path}: header says {dims} ({expected} bytes), more than {MAX_IDX_BYTES}")
            data = f.read(expected)
            extra = len(f.read(1))
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise UserError(f"{path}: cannot read IDX file ({e})") from None
    if len(data) != expected or extra:
        raise UserError(f"{path}: truncated or padded IDX data: header says {dims} "
                        f"({expected} bytes), file holds {'more' if extra else len(data)}")
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def _find(root: Path, stem: str) -> Path:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.exists() and not candidate.is_file():  # a FIFO would block the read for ever
            raise UserError(f"{candidate}: not a regular file")
        if candidate.exists():
            return candidate
    raise UserError(f"{root}: missing {stem}(.gz) (data.root must hold the four standard IDX files)")


def load_idx_folder(root: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images [N, 28, 28] uint8 and labels [N] uint8 of one split from an IDX folder."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"data.root: folder not found: {root}")
    img_stem, lbl_stem = IDX_FILES[split]
    images, labels = read_idx(_find(root, img_stem)), read_idx(_find(root, lbl_stem))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise UserError(f"{root}: {split} images have shape {list(images.shape)}, expected [{len(labels)}, H, W] "
                        f"to match {len(labels)} labels")
    if len(labels) == 0:
        raise UserError(f"{root}: {split} split is empty")
    return images, labels


def _normalise(train_x: torch.Tensor, test_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list, list]:
    """Per-channel standardisation with the training split's statistics (and those statistics)."""
    dims = (0, 2, 3)
    mean = train_x.mean(dims, keepdim=True)
    std = train_x.std(dims, keepdim=True).clamp_min(1e-8)
    return (train_x - mean) / std, (test_x - mean) / std, mean.flatten().tolist(), std.flatten().tolist()


def load_config_data(cfg: DataConfig, seed: int = 0) -> "Data":
    """`load_data` for a config section."""
    if ":" in cfg.name:
        data = load_factory_data(cfg.name, cfg.root, seed, cfg.train_limit, cfg.test_limit)
    elif cfg.name == "imagefolder":
        data = load_imagefolder_data(cfg.root, cfg.image_size, cfg.mean, cfg.std, cfg.train_limit, cfg.test_limit,
                                     seed=seed, random_crops=cfg.augment == "auto")
    else:
        data = load_data(cfg.name, cfg.root, seed=seed, test_fraction=cfg.test_fraction,
                         train_limit=cfg.train_limit, test_limit=cfg.test_limit)
    data.workers = cfg.workers
    data.augment = cfg.augment if cfg.augment != "auto" else (
        "crop-flip" if cfg.name in ("cifar10", "cifar100") else "none")
    return data


CIFAR_BYTES = 256 << 20  # a CIFAR binary file is 30 MiB (CIFAR-10 batch) to 150 MiB (CIFAR-100 train)
CIFAR_FILES = {
    "cifar10": {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]},
    "cifar100": {"train": ["train.bin"], "test": ["test.bin"]},
}


def _cifar_blobs(root: Path, names: list[str]) -> list[tuple[str, bytes]]:
    """The named .bin files from a folder (searched recursively) or from a .tar.gz archive."""
    if root.is_file() and root.name.endswith((".tar.gz", ".tgz", ".tar")):
        try:
            with tarfile.open(root) as tar:
                members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
                missing = [n for n in names if n not in members]
                if missing:
                    raise UserError(f"{root}: archive lacks {', '.join(missing)} (binary CIFAR expected)")
                big = next((n for n in names if members[n].size > CIFAR_BYTES), None)
                if big is not None:
                    raise UserError(f"{root}: {big} is {members[big].size} bytes, more than the {CIFAR_BYTES} a "
                                    "CIFAR file can hold")
                return [(n, tar.extractfile(members[n]).read()) for n in names]
        except (tarfile.TarError, OSError, EOFError) as e:
            raise UserError(f"{root}: cannot read archive ({e})") from None
    if not root.is_dir():
        raise UserError(f"data.root: folder or archive not found: {root}")
    out = []
    for n in names:
        hits = sorted(root.rglob(n))
        if not hits:
            pickled = sorted(root.rglob("data_batch_1")) + sorted(root.rglob("train"))
            hint = (" (found the pickled 'python version'; sparsepipe does not unpickle data: use the binary "
                    "version)") if any(h.is_file() for h in pickled) else ""
            raise UserError(f"{root}: missing {n}{hint}")
        out.append((str(hits[0]), read_bytes(hits[0], CIFAR_BYTES, "CIFAR file")))
    return out


def load_cifar(root: str | Path, name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images [N, 3, 32, 32] uint8 and labels [N] of one CIFAR split (binary format)."""
    label_bytes = 1 if name == "cifar10" else 2  # CIFAR-100: coarse, fine
    record = label_bytes + 3072
    images, labels = [], []
    for source, blob in _cifar_blobs(Path(root), CIFAR_FILES[name][split]):
        if len(blob) == 0 or len(blob) % record:
            raise UserError(f"{source}: size {len(blob)} is not a whole number of {record}-byte {name} records")
        arr = np.frombuffer(blob, dtype=np.uint8).reshape(-1, record)
        labels.append(arr[:, label_bytes - 1].astype(np.int64))
        images.append(arr[:, label_bytes:].reshape(-1, 3, 32, 32))
    return np.concatenate(images), np.concatenate(labels)


def load_imagefolder_data(root: str, size: int, mean: list[float], std: list[float], train_limit: int = 0,
                          test_limit: int = 0, seed: int = 0, random_crops: bool = True) -> Data:
    """An image folder, read lazily (see imagefolder.py). Training images get RandomResizedCrop + flip
    with `random_crops`, else the test images' Resize + CenterCrop."""
    from .imagefolder import IMAGENET_MEAN, IMAGENET_STD, ImageFolderSplit, channel_count, channel_stats, \
        list_images, split_folder, transforms

    if not root:
        raise UserError("data.root: imagefolder needs the folder holding train/ and test/")
    root_path = Path(root)
    train_items, classes = list_images(split_folder(root_path, "train"))
    test_items, _ = list_images(split_folder(root_path, "test"), classes)
    channels = channel_count(train_items[0][0])
    train, test = limit_splits(ImageFolderSplit(train_items, channels, None), ImageFolderSplit(test_items, channels, None),
                               len(classes), train_limit, test_limit, seed, str(root_path))
    if mean and len(mean) != channels:
        raise UserError(f"data.mean: {len(mean)} values for {channels}-channel images")
    if not mean:
        mean, std = ((list(IMAGENET_MEAN), list(IMAGENET_STD)) if channels == 3
                     else channel_stats(train.items, channels, size))
    train.transform, test.transform = transforms(random_crops, size, mean, std), transforms(False, size, mean, std)
    return Data(train, test, len(classes), (channels, size, size),
                preprocessing=_preprocessing(1 / 255, mean, std, f"{channels}x{size}x{size} after Resize({round(size * 8 / 7)}) + CenterCrop({size}) of the RGB/grey image"))


def _preprocessing(scale: float, mean: list[float], std: list[float], note: str) -> dict:
    """How a raw image becomes the model's input: x = (raw · scale − mean) / std, per channel."""
    return {"input": "float32, NCHW", "raw": note, "scale": scale, "mean": [float(m) for m in mean],
            "std": [float(v) for v in std], "formula": "x = (raw * scale - mean) / std (per channel)"}


def load_data(name: str, root: str = "", *, seed: int = 0, test_fraction: float = 0.2,
              train_limit: int = 0, test_limit: int = 0) -> Data:
    """Load a dataset held in memory by name; `*_limit` > 0 keeps a seeded, class-stratified subset of N
    samples (quick runs)."""
    if name == "digits":
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        bunch = load_digits()
        x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
        y = torch.tensor(bunch.target, dtype=torch.int64)
        n_test = round(test_fraction * len(y))
        if not 10 <= n_test <= len(y) - 10:  # a stratified split needs every class on both sides
            raise UserError(f"data.test_fraction: {test_fraction} leaves {n_test} of digits' {len(y)} images for "
                            f"testing; each split needs at least one image of each of the 10 classes")
        idx_tr, idx_te = train_test_split(np.arange(len(y)), test_size=test_fraction,
                                          random_state=seed, stratify=bunch.target)
        train, test = Split(x[idx_tr], y[idx_tr]), Split(x[idx_te], y[idx_te])
        scale, raw = 1 / 16, "8x8 grey, values 0..16 (scikit-learn's digits)"
    elif name in ("mnist", "fashion-mnist"):
        if not root:
            raise UserError(f"data.root: {name} needs the folder holding its IDX files")
        parts = {}
        for split in ("train", "test"):
            imgs, lbls = load_idx_folder(root, split)
            parts[split] = Split(torch.from_numpy(imgs.astype(np.float32) / 255.0).unsqueeze(1),
                                 torch.from_numpy(lbls.astype(np.int64)))
        train, test = parts["train"], parts["test"]
        scale, raw = 1 / 255, "28x28 grey, values 0..255"
    elif name in ("cifar10", "cifar100"):
        if not root:
            raise UserError(f"data.root: {name} needs the folder (or archive) holding its files")
        (tr_x, tr_y), (te_x, te_y) = load_cifar(root, name, "train"), load_cifar(root, name, "test")
        train = Split(torch.from_numpy(tr_x.astype(np.float32) / 255.0), torch.from_numpy(tr_y))
        test = Split(torch.from_numpy(te_x.astype(np.float32) / 255.0), torch.from_numpy(te_y))
        scale, raw = 1 / 255, "32x32 RGB, values 0..255"
    else:
        raise UserError(f"data.name: unknown dataset {name!r} (expected one of: {', '.join(DATASETS)})")
    if len(train) == 0 or len(test) == 0:
        raise UserError(f"data: {name} has an empty train or test split")
    if train.x.shape[1:] != test.x.shape[1:]:
        raise UserError(f"data: train images {tuple(train.x.shape[1:])} and test images "
                        f"{tuple(test.x.shape[1:])} differ in shape")
    num_classes = CLASSES[name]
    for split_name, split in (("train", train), ("test", test)):
        bad = split.y[(split.y < 0) | (split.y >= num_classes)]
        if len(bad):
            raise UserError(f"data: {name} {split_name} label {int(bad[0])} is outside its {num_classes} classes "
                            f"[0, {num_classes - 1}] (data.root: {root})")
    train, test = limit_splits(train, test, num_classes, train_limit, test_limit, seed, name)
    train_x, test_x, mean, std = _normalise(train.x, test.x)
    return Data(Split(train_x, train.y), Split(test_x, test.y), num_classes, tuple(train_x.shape[1:]),
                preprocessing=_preprocessing(scale, mean, std, raw))
