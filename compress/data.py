"""Datasets by name, loaded from local files into tensors (no download needed).

- digits: scikit-learn's bundled 8x8 handwritten digits (1,797 real images), split
  deterministically into train/test.
- mnist / fashion-mnist: the four standard IDX files (.gz or plain) in a folder.
"""
from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import UserError
from .schema import opt

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
DATASETS = ("digits", "mnist", "fashion-mnist")


@dataclass
class DataConfig:
    name: str = opt("digits", "Dataset: " + ", ".join(DATASETS) + ".")
    root: str = opt("", "Folder holding the dataset files (mnist, fashion-mnist: the four IDX files, "
                    ".gz or plain). Relative paths are taken from the working directory.")
    test_fraction: float = opt(0.2, "digits: held-out test fraction (stratified, seeded split).",
                               lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    train_limit: int = opt(0, "Use only the first N training samples (0 = all).", lo=0)
    test_limit: int = opt(0, "Use only the first N test samples (0 = all).", lo=0)

    def check(self, where: str) -> None:
        if self.name not in DATASETS:
            raise UserError(f"{where}.name: unknown dataset {self.name!r} (expected one of: {', '.join(DATASETS)})")


@dataclass
class Split:
    """Images [N, C, H, W] float32 (normalised) and labels [N] int64."""
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Data:
    train: Split
    test: Split
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (gzipped or plain) into a uint8 array, validating its header."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise UserError(f"{path}: cannot read IDX file ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UserError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise UserError(f"{path}: truncated or padded IDX data: header says {dims} "
                        f"({expected} bytes), file holds {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find(root: Path, stem: str) -> Path:
    for candidate in (root / f"{stem}.gz", root / stem):
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
        raise UserError(f"{root}: {split} images {images.shape} and labels {labels.shape} do not match")
    if len(labels) == 0:
        raise UserError(f"{root}: {split} split is empty")
    return images, labels


def _normalise(train_x: torch.Tensor, test_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = train_x.mean(), train_x.std().clamp_min(1e-8)
    return (train_x - mean) / std, (test_x - mean) / std


def _limit(split: Split, n: int) -> Split:
    return split if n <= 0 or n >= len(split) else Split(split.x[:n], split.y[:n])


def load_config_data(cfg: DataConfig, seed: int = 0) -> "Data":
    """`load_data` for a config section."""
    return load_data(cfg.name, cfg.root, seed=seed, test_fraction=cfg.test_fraction,
                     train_limit=cfg.train_limit, test_limit=cfg.test_limit)


def load_data(name: str, root: str = "", *, seed: int = 0, test_fraction: float = 0.2,
              train_limit: int = 0, test_limit: int = 0) -> Data:
    """Load a dataset by name; `*_limit` > 0 keeps the first N samples (quick runs)."""
    if name == "digits":
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        bunch = load_digits()
        x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
        y = torch.tensor(bunch.target, dtype=torch.int64)
        idx_tr, idx_te = train_test_split(np.arange(len(y)), test_size=test_fraction,
                                          random_state=seed, stratify=bunch.target)
        train, test = Split(x[idx_tr], y[idx_tr]), Split(x[idx_te], y[idx_te])
    elif name in ("mnist", "fashion-mnist"):
        if not root:
            raise UserError(f"data.root: {name} needs the folder holding its IDX files")
        parts = {}
        for split in ("train", "test"):
            imgs, lbls = load_idx_folder(root, split)
            parts[split] = Split(torch.from_numpy(imgs.astype(np.float32) / 255.0).unsqueeze(1),
                                 torch.from_numpy(lbls.astype(np.int64)))
        train, test = parts["train"], parts["test"]
    else:
        raise UserError(f"data.name: unknown dataset {name!r} (expected one of: {', '.join(DATASETS)})")
    train, test = _limit(train, train_limit), _limit(test, test_limit)
    if len(train) == 0 or len(test) == 0:
        raise UserError(f"data: {name} has an empty train or test split")
    if train.x.shape[1:] != test.x.shape[1:]:
        raise UserError(f"data: train images {tuple(train.x.shape[1:])} and test images "
                        f"{tuple(test.x.shape[1:])} differ in shape")
    train_x, test_x = _normalise(train.x, test.x)
    num_classes = int(max(train.y.max(), test.y.max())) + 1
    return Data(Split(train_x, train.y), Split(test_x, test.y), num_classes)


def batches(split: Split, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0):
    """Yield (x, y) mini-batches. The order depends only on (seed, epoch), so a resumed run sees the same data."""
    n = len(split)
    if shuffle:
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(n, generator=g)
    else:
        order = torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        yield split.x[idx], split.y[idx]
