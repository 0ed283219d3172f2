"""The [data] section."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import UserError
from ..schema import opt

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "cifar100", "imagefolder")
CLASSES = {"digits": 10, "mnist": 10, "fashion-mnist": 10, "cifar10": 10, "cifar100": 100}


@dataclass
class DataConfig:
    name: str = opt("digits", "Dataset: " + ", ".join(DATASETS) + ", or 'package.module:factory' called as "
                    "factory(root=..., seed=...) and returning (train, test, num_classes): torch Datasets of "
                    "(image tensor, label).")
    root: str = opt("", "Folder holding the dataset files (mnist, fashion-mnist: the four IDX files, "
                    ".gz or plain). Relative paths are taken from the working directory.")
    test_fraction: float = opt(0.2, "digits: held-out test fraction (stratified, seeded split).",
                               lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    train_limit: int = opt(0, "Use only the first N training samples (0 = all).", lo=0)
    test_limit: int = opt(0, "Use only the first N test samples (0 = all).", lo=0)
    augment: Literal["auto", "none", "crop-flip"] = opt(
        "auto", "Training augmentation: crop-flip (pad 4, random crop, horizontal flip), none, or auto "
        "(crop-flip for cifar10/cifar100, RandomResizedCrop + flip for imagefolder, none otherwise). "
        "Use none for images a flip or a crop changes the class of (digits, text).")
    image_size: int = opt(32, "imagefolder: the square size images are cropped to (train: RandomResizedCrop "
                          "+ flip with augment auto, else as test; test: Resize + CenterCrop).", lo=4, hi=1024)
    mean: list[float] = opt([], "imagefolder: per-channel mean for normalisation, in [0, 1] pixel units "
                            "(empty: ImageNet's for colour images, measured on the training images for grey).")
    std: list[float] = opt([], "imagefolder: per-channel std (empty: as for mean).", lo=0.0, lo_open=True)
    workers: int = opt(0, "DataLoader worker processes decoding batches (0: in the training process).", lo=0)

    def check(self, where: str) -> None:
        if self.name not in DATASETS and ":" not in self.name:
            raise UserError(f"{where}.name: unknown dataset {self.name!r} (expected one of: {', '.join(DATASETS)}, "
                            "or 'package.module:factory')")
        if len(self.mean) != len(self.std):
            raise UserError(f"{where}.std: expected as many values as mean ({len(self.mean)}), got {len(self.std)}")

