"""The [data] section."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import UserError
from ..schema import opt

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "cifar100", "imagefolder")


@dataclass
class DataConfig:
    name: str = opt("digits", "Dataset: " + ", ".join(DATASETS) + ".")
    root: str = opt("", "Folder holding the dataset files (mnist, fashion-mnist: the four IDX files, "
                    ".gz or plain). Relative paths are taken from the working directory.")
    test_fraction: float = opt(0.2, "digits: held-out test fraction (stratified, seeded split).",
                               lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    train_limit: int = opt(0, "Use only the first N training samples (0 = all).", lo=0)
    test_limit: int = opt(0, "Use only the first N test samples (0 = all).", lo=0)
    augment: Literal["auto", "none", "crop-flip"] = opt(
        "auto", "Training augmentation: crop-flip (pad 4, random crop, horizontal flip), none, or auto "
        "(crop-flip for cifar10/cifar100, none otherwise).")
    image_size: int = opt(32, "imagefolder: images are resized to this square size.", lo=4)

    def check(self, where: str) -> None:
        if self.name not in DATASETS:
            raise UserError(f"{where}.name: unknown dataset {self.name!r} (expected one of: {', '.join(DATASETS)})")

