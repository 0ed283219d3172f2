"""The [train] section."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import UserError
from ..schema import opt


@dataclass
class TrainConfig:
    epochs: int = opt(20, "Training epochs (pruning and fine-tuning included).", lo=1)
    finetune_epochs: int = opt(0, "Of those, the last N fine-tune after the pruning phase: the method's schedule "
                               "(its fractions of training) spans the first epochs − N; masks stay fixed after it "
                               "(LATS and STR keep their final threshold).", lo=0)
    batch_size: int = opt(64, "Mini-batch size.", lo=1, hi=65536)
    optimizer: Literal["sgd", "adamw"] = opt("sgd", "sgd (momentum, nesterov) or adamw (decoupled weight decay).")
    lr: float = opt(0.05, "Peak learning rate.", lo=0.0, lo_open=True, hi=1000.0)
    lr_schedule: Literal["cosine", "constant", "step"] = opt(
        "cosine", "Per-step learning-rate schedule after warm-up; step: multiply by lr_gamma at each of "
        "lr_milestones (epochs).")
    lr_milestones: list[int] = opt([], "lr_schedule 'step': epochs at which the rate is multiplied by lr_gamma.", lo=1)
    lr_gamma: float = opt(0.1, "lr_schedule 'step': the factor at each milestone.", lo=0.0, lo_open=True)
    warmup_epochs: int = opt(0, "Linear warm-up epochs.", lo=0)
    momentum: float = opt(0.9, "SGD momentum (adamw: beta1).", lo=0.0, hi=1.0, hi_open=True)
    nesterov: bool = opt(False, "Nesterov momentum (sgd).")
    weight_decay: float = opt(5e-4, "Weight decay on weights; on biases and BatchNorm parameters too when the "
                              "method's decay_1d is on (lats, str, greg by default, as their official code).",
                              lo=0.0, hi=1.0)
    label_smoothing: float = opt(0.0, "Cross-entropy label smoothing.", lo=0.0, hi=1.0, hi_open=True)
    distill: float = opt(0.0, "Weight of knowledge distillation from the run's dense model in the pruned model's "
                         "loss: (1 − distill) · cross-entropy + distill · T² · KL(dense ‖ pruned); 0: labels only.",
                         lo=0.0, hi=1.0)
    distill_temperature: float = opt(4.0, "Softmax temperature T of distillation.", lo=0.0, lo_open=True, hi=100.0)
    device: str = opt("cpu", "Training device: cpu, cuda, cuda:N, or auto (CUDA when present).")

    def check(self, where: str) -> None:
        if self.finetune_epochs >= self.epochs:
            raise UserError(f"{where}.finetune_epochs: must be smaller than epochs ({self.epochs})")
        if self.lr_schedule == "step" and not self.lr_milestones:
            raise UserError(f"{where}.lr_milestones: lr_schedule 'step' needs at least one milestone epoch")
        if self.warmup_epochs >= self.epochs:
            raise UserError(f"{where}.warmup_epochs: must be smaller than epochs ({self.epochs})")
        if not (self.device in ("cpu", "auto", "cuda") or self.device.startswith("cuda:")):
            raise UserError(f"{where}.device: expected cpu, cuda, cuda:N or auto, got {self.device!r}")

