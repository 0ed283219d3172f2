"""Datasets by name, loaded from local files into tensors (no download needed).

- digits: scikit-learn's bundled 8x8 handwritten digits (1,797 real images), split
  deterministically into train/test.
- mnist / fashion-mnist: the four standard IDX files (.gz or plain) in a folder.
- cifar10 / cifar100: the binary distribution (data_batch_*.bin / train.bin ...), as a folder or
  the original .tar.gz. The pickled "python version" is refused: unpickling runs code.
- imagefolder: ROOT/train/CLASS/*.png|jpg and ROOT/test/CLASS/... (or val/), resized.
"""
from __future__ import annotations

import gzip
import struct
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import UserError
from .config.data import DATASETS, DataConfig

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


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
    augment: str = "none"

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
        raise UserError(f"{root}: {split} images have shape {list(images.shape)}, expected [{len(labels)}, H, W] "
                        f"to match {len(labels)} labels")
    if len(labels) == 0:
        raise UserError(f"{root}: {split} split is empty")
    return images, labels


def _normalise(train_x: torch.Tensor, test_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel standardisation with the training split's statistics."""
    dims = (0, 2, 3)
    mean = train_x.mean(dims, keepdim=True)
    std = train_x.std(dims, keepdim=True).clamp_min(1e-8)
    return (train_x - mean) / std, (test_x - mean) / std


def _limit(split: Split, n: int) -> Split:
    return split if n <= 0 or n >= len(split) else Split(split.x[:n], split.y[:n])


def load_config_data(cfg: DataConfig, seed: int = 0) -> "Data":
    """`load_data` for a config section."""
    data = load_data(cfg.name, cfg.root, seed=seed, test_fraction=cfg.test_fraction,
                     train_limit=cfg.train_limit, test_limit=cfg.test_limit, image_size=cfg.image_size)
    data.augment = cfg.augment if cfg.augment != "auto" else (
        "crop-flip" if cfg.name in ("cifar10", "cifar100") else "none")
    return data


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
        out.append((str(hits[0]), hits[0].read_bytes()))
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


def load_imagefolder(root: str | Path, split: str, size: int, classes: list[str] | None = None
                     ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images [N, C, size, size] uint8 from ROOT/SPLIT/CLASS/*; grey if every image is grey, else RGB."""
    from PIL import Image, UnidentifiedImageError

    folder = Path(root) / split
    if split == "test" and not folder.is_dir() and (Path(root) / "val").is_dir():
        folder = Path(root) / "val"
    if not folder.is_dir():
        raise UserError(f"data.root: {folder} not found (imagefolder needs train/ and test/ or val/)")
    classes = classes or sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise UserError(f"{folder}: no class folders")
    images, labels = [], []
    for label, cls in enumerate(classes):
        for path in sorted((folder / cls).glob("*")) if (folder / cls).is_dir() else []:
            if path.suffix.lower() not in (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"):
                continue
            try:
                with Image.open(path) as im:
                    images.append(im.convert("RGB").resize((size, size), Image.BILINEAR))
            except (UnidentifiedImageError, OSError) as e:
                raise UserError(f"{path}: not a readable image ({e})") from None
            labels.append(label)
    if not images:
        raise UserError(f"{folder}: no images found")
    arr = np.stack([np.asarray(im) for im in images]).transpose(0, 3, 1, 2)
    if np.all(arr[:, 0] == arr[:, 1]) and np.all(arr[:, 1] == arr[:, 2]):
        arr = arr[:, :1]
    return np.ascontiguousarray(arr), np.asarray(labels, dtype=np.int64), classes


def crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Standard CIFAR augmentation on a batch: zero-pad, random crop back to size, random h-flip."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(n, x.shape[1], h, w + 2 * pad)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(n, x.shape[1], h, w)
    out = out.gather(3, cols)
    flip = torch.rand(n, generator=generator) < 0.5
    out[flip] = out[flip].flip(3)
    return out


def load_data(name: str, root: str = "", *, seed: int = 0, test_fraction: float = 0.2,
              train_limit: int = 0, test_limit: int = 0, image_size: int = 32) -> Data:
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
    elif name in ("cifar10", "cifar100", "imagefolder"):
        if not root:
            raise UserError(f"data.root: {name} needs the folder (or archive) holding its files")
        if name == "imagefolder":
            tr_x, tr_y, classes = load_imagefolder(root, "train", image_size)
            te_x, te_y, _ = load_imagefolder(root, "test", image_size, classes)
            if tr_x.shape[1] != te_x.shape[1]:  # one split grey, the other colour: use colour for both
                tr_x, te_x = (np.repeat(a, 3, axis=1) if a.shape[1] == 1 else a for a in (tr_x, te_x))
        else:
            (tr_x, tr_y), (te_x, te_y) = load_cifar(root, name, "train"), load_cifar(root, name, "test")
        train = Split(torch.from_numpy(tr_x.astype(np.float32) / 255.0), torch.from_numpy(tr_y))
        test = Split(torch.from_numpy(te_x.astype(np.float32) / 255.0), torch.from_numpy(te_y))
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


def batches(split: Split, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0,
            augment: str = "none"):
    """Yield (x, y) mini-batches. Order and augmentation depend only on (seed, epoch), so a resumed
    run sees the same data."""
    n = len(split)
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=g) if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        x = split.x[idx]
        yield (crop_flip(x, g) if augment == "crop-flip" else x), split.y[idx]
