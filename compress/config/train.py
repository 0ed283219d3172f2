"""The [train] section."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import UserError
from ..schema import opt


@dataclass
class TrainConfig:
    epochs: int = opt(20, "Training epochs (pruning included).", lo=1)
    batch_size: int = opt(64, "Mini-batch size.", lo=1)
    lr: float = opt(0.05, "Peak learning rate (SGD).", lo=0.0, lo_open=True)
    lr_schedule: Literal["cosine", "constant"] = opt("cosine", "Per-step learning-rate schedule after warm-up.")
    warmup_epochs: int = opt(0, "Linear warm-up epochs.", lo=0)
    momentum: float = opt(0.9, "SGD momentum.", lo=0.0, hi=1.0, hi_open=True)
    nesterov: bool = opt(False, "Nesterov momentum.")
    weight_decay: float = opt(5e-4, "Weight decay on weights (not on biases or BatchNorm).", lo=0.0)
    label_smoothing: float = opt(0.0, "Cross-entropy label smoothing.", lo=0.0, hi=1.0, hi_open=True)
    device: str = opt("cpu", "Training device: cpu, cuda, cuda:N, or auto (CUDA when present).")

    def check(self, where: str) -> None:
        if self.warmup_epochs >= self.epochs:
            raise UserError(f"{where}.warmup_epochs: must be smaller than epochs ({self.epochs})")
        if not (self.device in ("cpu", "auto", "cuda") or self.device.startswith("cuda:")):
            raise UserError(f"{where}.device: expected cpu, cuda, cuda:N or auto, got {self.device!r}")

