"""An image folder read lazily: ROOT/train/CLASS/* and ROOT/test/CLASS/* (or val/), decoded per
sample with torchvision transforms, so a dataset far larger than memory streams through a DataLoader.

Training samples get RandomResizedCrop + horizontal flip, test samples Resize + CenterCrop; both
end in per-channel normalisation. Random transforms are seeded per (epoch, sample), so the order
of workers never changes what a sample looks like and a resumed run sees the same data.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Iterator

import torch
from torch.utils.data import Dataset

from .errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
MAX_PIXELS = 40_000_000  # 40 MP per image (PIL's own bomb limit is 89 MP, then only a warning)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def split_folder(root: Path, split: str) -> Path:
    folder = root / split
    if split == "test" and not folder.is_dir() and (root / "val").is_dir():
        folder = root / "val"
    if not folder.is_dir():
        raise UserError(f"data.root: {folder} not found (imagefolder needs train/ and test/ or val/)")
    return folder


def list_images(folder: Path, classes: list[str] | None = None) -> tuple[list[tuple[str, int]], list[str]]:
    """(path, label) of every image under folder/CLASS/, and the class names (sorted folder names)."""
    found = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if classes is not None and found != classes:
        extra, missing = sorted(set(found) - set(classes)), sorted(set(classes) - set(found))
        raise UserError(f"{folder}: class folders differ from the training split's "
                        f"(extra: {extra[:3]}, missing: {missing[:3]})")
    classes = found
    if not classes:
        raise UserError(f"{folder}: no class folders")
    if len(classes) < 2:
        raise UserError(f"{folder}: only one class folder ({classes[0]!r}); a classifier needs at least two")
    items = []
    for label, cls in enumerate(classes):
        images = [p for p in sorted((folder / cls).iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
        if not images:
            raise UserError(f"{folder / cls}: class folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
        for p in images:
            if not p.exists():
                raise UserError(f"{p}: dangling symbolic link (its target {os.readlink(p)!r} does not exist)")
            if not p.is_file():  # a FIFO would block the decoder for ever
                raise UserError(f"{p}: not a regular file")
        items += [(str(p), label) for p in images]
    return items, classes


@contextlib.contextmanager
def checked_image(path: str) -> Iterator:
    """PIL's image of `path`, refused in one line when unreadable or over MAX_PIXELS pixels (checked from
    the header, before the pixels are decoded: a small PNG can declare 20000 x 20000)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise UserError(f"{path}: image of {im.width} x {im.height} pixels, more than the "
                                    f"{MAX_PIXELS:,} allowed")
                yield im
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as e:
        raise UserError(f"{path}: not a readable image ({str(e)[:200]})") from None


def open_image(path: str, channels: int):
    """The decoded image as PIL, in L (grey) or RGB; an unreadable file is a UserError naming it."""
    with checked_image(path) as im:
        return im.convert("L" if channels == 1 else "RGB")


def transforms(train: bool, size: int, mean: list[float], std: list[float]):
    from torchvision.transforms import v2

    resize = ([v2.RandomResizedCrop(size, scale=(0.35, 1.0), antialias=True), v2.RandomHorizontalFlip()] if train
              else [v2.Resize(round(size * 8 / 7), antialias=True), v2.CenterCrop(size)])
    return v2.Compose([v2.PILToTensor(), *resize, v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


class ImageFolderSplit(Dataset):
    """One split of an image folder: item i is (image [C, size, size] float32, label); item (i, seed)
    applies the random transforms under that seed."""

    takes_seed = True  # the loader passes (index, seed) for training batches

    def __init__(self, items: list[tuple[str, int]], channels: int, transform):
        self.items, self.channels, self.transform = items, channels, transform
        self.labels = torch.tensor([label for _, label in items], dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, None)
        path, label = self.items[index]
        image = open_image(path, self.channels)
        if seed is None:
            return self.transform(image), label
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(image), label


def channel_count(first_image: str) -> int:
    """1 for grey images, 3 otherwise (judged by the first training image)."""
    with checked_image(first_image) as im:
        return 1 if im.mode in ("1", "L", "I", "I;16", "F") else 3


def channel_stats(items: list[tuple[str, int]], channels: int, size: int, limit: int = 500
                  ) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of up to `limit` training images (evenly spaced), in [0, 1] units."""
    plain = transforms(False, size, [0.0] * channels, [1.0] * channels)
    step = max(len(items) // limit, 1)
    x = torch.stack([plain(open_image(p, channels)) for p, _ in items[::step][:limit]])
    return x.mean((0, 2, 3)).tolist(), x.std((0, 2, 3)).clamp_min(1e-6).tolist()
