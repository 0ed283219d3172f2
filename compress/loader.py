"""Mini-batches from any dataset: the order and the augmentation depend only on (seed, epoch), each
rank of a torchrun job reads only its share of every global batch, and DataLoader workers decode
in parallel (data.workers).

In-memory tensors with no workers take a fast path (index the tensors directly); everything else
goes through torch's DataLoader.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from .distributed import World, current
from .errors import UserError


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


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


def _collate(batch):
    """A tensor dataset's __getitems__ already returns (x, y); other datasets return samples, which must
    share one shape (a one-line error names the first two that differ)."""
    if isinstance(batch, tuple):
        return batch
    shapes = [tuple(getattr(x, "shape", ())) for x, *_ in batch]
    if len(set(shapes)) > 1:
        j = next(i for i, s in enumerate(shapes) if s != shapes[0])
        raise UserError(f"data: samples of different shapes in one batch: {list(shapes[0])} and {list(shapes[j])}; "
                        f"every sample must have the same shape")
    return default_collate(batch)


def _check_labels(y: torch.Tensor, num_classes: int | None, where: str) -> None:
    if num_classes is not None and len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        bad = int(y[(y < 0) | (y >= num_classes)][0])
        raise UserError(f"{where}: label {bad} is outside the {num_classes} declared classes [0, {num_classes - 1}]")


def batches(split: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0,
            augment: str = "none", workers: int = 0, world: World | None = None, num_classes: int | None = None,
            pin_memory: bool = False, where: str = "data") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield this rank's (x, y) of every global mini-batch of `batch_size`.

    Sample i of an epoch gets the seed (seed, epoch, i) for its random transforms where the dataset
    takes one (item (i, sample_seed)); labels outside [0, num_classes) are an error naming `where`.
    """
    world = world or current()
    n = len(split)
    g = epoch_generator(seed, epoch)
    order = torch.randperm(n, generator=g) if shuffle else torch.arange(n)
    shards = [order[start:start + batch_size][world.rank::world.size] for start in range(0, n, batch_size)]
    if hasattr(split, "x") and workers == 0:  # in-memory tensors: index them directly
        for idx in shards:
            x, y = split.x[idx], split.y[idx]
            _check_labels(y, num_classes, where)
            yield (crop_flip(x, g) if augment == "crop-flip" else x), y
        return
    base = (seed * 100_003 + epoch) * 1_000_003
    seeded = shuffle and getattr(split, "takes_seed", False)
    keys = [[(int(i), base + int(i)) for i in idx] if seeded else idx.tolist() for idx in shards]
    loader = DataLoader(split, batch_sampler=keys, num_workers=workers, collate_fn=_collate, pin_memory=pin_memory,
                        generator=torch.Generator().manual_seed(base))  # worker seeds: fixed per epoch
    try:
        for x, y in loader:
            y = torch.as_tensor(y)
            if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
                raise UserError(f"{where}: labels are {y.dtype}, expected integer class indices")
            y = y.to(torch.int64)
            _check_labels(y, num_classes, where)
            yield (crop_flip(x, g) if augment == "crop-flip" else x), y
    except UserError as e:  # raised in a worker: keep the message, drop the worker's traceback
        raise UserError(str(e).strip().splitlines()[-1].removeprefix("compress.errors.UserError: ")) from None


def first(split: Dataset, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `n` samples (eval transforms) as tensors: samples for export, calibration, summaries."""
    if hasattr(split, "x"):
        return split.x[:n], split.y[:n]
    return next(batches(split, min(n, len(split)), shuffle=False, world=World()))
