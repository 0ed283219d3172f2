"""Pure schedule functions: learning rate per step, pruning thresholds and sparsity ramps."""
from __future__ import annotations

import math


def lr_at(step: int, total_steps: int, base_lr: float, kind: str = "cosine",
          warmup_steps: int = 0, final_fraction: float = 0.0) -> float:
    """Learning rate used at optimizer step `step` (0-based).

    Linear warm-up from base_lr/warmup_steps, then `constant` or `cosine` decay to
    base_lr * final_fraction at the last step.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if kind == "constant":
        return base_lr
    if kind == "cosine":
        span = max(total_steps - warmup_steps, 1)
        x = min(max(step - warmup_steps, 0) / span, 1.0)
        lo = base_lr * final_fraction
        return lo + (base_lr - lo) * 0.5 * (1.0 + math.cos(math.pi * x))
    raise ValueError(f"unknown lr schedule {kind!r}")


def lr_sum(start: int, stop: int, total_steps: int, base_lr: float, kind: str,
           warmup_steps: int = 0, final_fraction: float = 0.0) -> float:
    """Σ η_s for s in [start, stop): the denominator of the LATS final-threshold form."""
    return sum(lr_at(s, total_steps, base_lr, kind, warmup_steps, final_fraction)
               for s in range(start, stop))
