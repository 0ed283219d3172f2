"""Seeded, class-stratified subsets (data.train_limit / test_limit, calibration samples) for every
dataset kind: taking the first N samples of a class-ordered folder once trained a model on class 0
alone and tested it on two classes."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import UserError


def labels_of(ds: Dataset) -> np.ndarray:
    """Every label of `ds`, from its label tensor where it has one (no image is decoded), else item by item."""
    labels = stored_labels(ds)
    return labels if labels is not None else np.array([int(ds[i][1]) for i in range(len(ds))], dtype=np.int64)


def stored_labels(ds: Dataset) -> np.ndarray | None:
    """The labels `ds` keeps beside its samples (a `y` / `labels` / `targets` attribute, a TensorDataset's
    second tensor), or None where reading them would mean loading every sample."""
    for attr in ("y", "labels", "targets"):
        value = getattr(ds, attr, None)
        if isinstance(value, (torch.Tensor, np.ndarray, list)):
            labels = np.asarray(value).reshape(-1)
            return labels.astype(np.int64) if len(labels) == len(ds) and labels.dtype.kind in "iu" else None
    tensors = getattr(ds, "tensors", None)  # TensorDataset
    if isinstance(tensors, tuple) and len(tensors) == 2 and not tensors[1].is_floating_point():
        return tensors[1].numpy().astype(np.int64).reshape(-1)
    return None


def stratified(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of `n` samples, as even across the classes present as their counts allow (each
    class in a seeded random order; a class too small to give its share gives all it has)."""
    if n <= 0 or n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    rank = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        rank[rng.permutation(members)] = np.arange(len(members))
    class_order = rng.permutation(int(labels.max()) + 1)  # which class gets a remainder sample: seeded too
    order = np.lexsort((class_order[labels], rank))
    return np.sort(order[:n])


def check_classes(labels: np.ndarray, num_classes: int, where: str) -> None:
    """Every class of [0, num_classes) has at least one sample in this split."""
    counts = np.bincount(labels[(labels >= 0) & (labels < num_classes)], minlength=num_classes)
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        raise UserError(f"{where}: class {int(empty[0])} has no samples ({len(empty)} of {num_classes} classes "
                        f"are empty); every class needs at least one")


def limit(ds: Dataset, n: int, seed: int, num_classes: int, where: str) -> Dataset:
    """`ds` cut to a stratified subset of `n` (0: all); a class the split (or the subset) leaves without
    samples is an error naming `where` (e.g. 'data.train_limit = 5'). A whole split is checked where its
    labels are stored beside the samples; the loader checks each batch's label range either way."""
    if n <= 0 or n >= len(ds):
        labels = stored_labels(ds)
        if labels is not None:
            check_classes(labels, num_classes, where)
        return ds
    labels = labels_of(ds)
    keep = stratified(labels, n, seed)
    check_classes(labels[keep], num_classes, where)
    return subset(ds, keep)


def sample(ds: Dataset, n: int, seed: int) -> Dataset:
    """A seeded, class-stratified subset of `n` samples (e.g. int8 calibration), unchecked."""
    return ds if n >= len(ds) else subset(ds, stratified(labels_of(ds), n, seed))


def subset(ds: Dataset, keep: np.ndarray) -> Dataset:
    """The items `keep` of `ds`, keeping an in-memory split in memory (its fast path)."""
    if hasattr(ds, "x") and hasattr(ds, "y") and isinstance(ds.x, torch.Tensor):
        idx = torch.from_numpy(keep)
        return type(ds)(ds.x[idx], ds.y[idx])
    if hasattr(ds, "items") and hasattr(ds, "channels") and hasattr(ds, "transform"):  # ImageFolderSplit
        return type(ds)([ds.items[i] for i in keep], ds.channels, ds.transform)
    from torch.utils.data import Subset

    return Subset(ds, keep.tolist())


def limit_splits(train: Dataset, test: Dataset, num_classes: int, train_limit: int, test_limit: int, seed: int,
                 what: str) -> tuple[Dataset, Dataset]:
    """Both splits cut to seeded, class-stratified subsets (a limit of 0 keeps all); every class must
    keep at least one sample in each split."""
    out = []
    for split, n, name in ((train, train_limit, "train"), (test, test_limit, "test")):
        where = f"data.{name}_limit = {n}: {what} {name} split" if n else f"data: {what} {name} split"
        out.append(limit(split, n, seed, num_classes, where))
    return out[0], out[1]
