"""Knowledge distillation: the pruned model learns from the dense model's softened outputs as well as
from the labels (Hinton, Vinyals & Dean, 2015), which helps it recover what the cut took."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, hard_loss: torch.Tensor, weight: float,
                      temperature: float) -> torch.Tensor:
    """(1 − weight) · `hard_loss` + weight · T² · KL(teacher ‖ student), both logits softened by T.

    T² keeps the soft term's gradients on the scale of the hard one's as T changes."""
    t = temperature
    soft = F.kl_div(F.log_softmax(student.float() / t, 1), F.log_softmax(teacher.float() / t, 1), log_target=True,
                    reduction="batchmean") * (t * t)
    return (1 - weight) * hard_loss + weight * soft
