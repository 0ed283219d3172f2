"""What every dataset loader returns: the splits, the class count, the sample shape, the preprocessing."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils.data import Dataset


@dataclass
class Split(Dataset):
    """A split held in memory: images [N, C, H, W] float32 (normalised) and labels [N] int64."""
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i], int(self.y[i])

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices)
        return self.x[idx], self.y[idx]


@dataclass
class Data:
    """The train and test splits (torch Datasets), the class count and one sample's shape, and how
    raw inputs become model inputs (`preprocessing`, recorded with every exported model)."""
    train: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, ...]
    augment: str = "none"
    workers: int = 0
    preprocessing: dict = field(default_factory=dict)
