"""A user's own dataset: `data.name = "package.module:factory"`, called as factory(root=..., seed=...)
and returning (train, test, num_classes) with torch Datasets of (image tensor [C, H, W], label)."""
from __future__ import annotations

import torch
from torch.utils.data import Dataset

from .dataset import Data
from .errors import UserError
from .imports import call_user, load_object
from .subsets import limit_splits


MAX_CLASSES = 100_000  # more would make the classifier's last layer alone gigabytes


def _check_sample(ds: Dataset, spec: str, split: str) -> tuple[int, ...]:
    try:
        sample = ds[0]
    except Exception as e:
        raise UserError(f"data.name: {spec!r} {split} dataset fails on item 0 ({type(e).__name__}: {e})") from None
    if not (isinstance(sample, (tuple, list)) and len(sample) == 2 and isinstance(sample[0], torch.Tensor)
            and sample[0].is_floating_point()):
        raise UserError(f"data.name: {spec!r} {split} items must be (float image tensor, label), "
                        f"got {type(sample).__name__}")
    return tuple(sample[0].shape)


def load_factory_data(spec: str, root: str, seed: int, train_limit: int = 0, test_limit: int = 0) -> Data:
    """The user's factory's splits, checked (sized Datasets, float image tensors, one shape), as Data."""
    result = call_user(load_object(spec, "data.name"), spec, "data.name", root=root, seed=seed)
    if not (isinstance(result, (tuple, list)) and len(result) == 3):
        raise UserError(f"data.name: {spec!r} must return (train, test, num_classes), got {type(result).__name__}")
    train, test, num_classes = result
    for split, ds in (("train", train), ("test", test)):
        if not isinstance(ds, Dataset) or not hasattr(ds, "__len__"):
            raise UserError(f"data.name: {spec!r} returned a {split} split of type {type(ds).__name__}, "
                            "not a sized torch.utils.data.Dataset")
        if len(ds) == 0:
            raise UserError(f"data.name: {spec!r} returned an empty {split} dataset")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 2 <= num_classes <= MAX_CLASSES:
        raise UserError(f"data.name: {spec!r} returned num_classes {num_classes!r}, expected an integer in "
                        f"[2, {MAX_CLASSES}]")
    shape = _check_sample(train, spec, "train")
    if _check_sample(test, spec, "test") != shape:
        raise UserError(f"data.name: {spec!r} train and test images differ in shape")

    train, test = limit_splits(train, test, num_classes, train_limit, test_limit, seed, f"factory {spec}")
    return Data(train, test, num_classes, shape,
                preprocessing={"input": "float32, NCHW", "raw": f"as produced by the dataset factory {spec}",
                               "formula": "the factory's own transform"})
