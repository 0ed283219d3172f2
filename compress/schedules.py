"""Pure schedule functions: learning rate per step, pruning thresholds and sparsity ramps."""
from __future__ import annotations

import math


def lr_at(step: int, total_steps: int, base_lr: float, kind: str = "cosine",
          warmup_steps: int = 0, final_fraction: float = 0.0, milestones: tuple[int, ...] = (),
          gamma: float = 0.1) -> float:
    """Learning rate used at optimizer step `step` (0-based).

    Linear warm-up from base_lr/warmup_steps, then `constant`, `cosine` decay to
    base_lr * final_fraction at the last step, or `step`: × gamma at each milestone step passed.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if kind == "constant":
        return base_lr
    if kind == "step":
        return base_lr * gamma ** sum(step >= m for m in milestones)
    if kind == "cosine":
        span = max(total_steps - warmup_steps, 1)
        x = min(max(step - warmup_steps, 0) / span, 1.0)
        lo = base_lr * final_fraction
        return lo + (base_lr - lo) * 0.5 * (1.0 + math.cos(math.pi * x))
    raise ValueError(f"unknown lr schedule {kind!r}")


def lr_sum(start: int, stop: int, total_steps: int, base_lr: float, kind: str,
           warmup_steps: int = 0, final_fraction: float = 0.0) -> float:
    """Σ η_s for s in [start, stop): the denominator of the LATS final-threshold form."""
    return sum(lr_at(s, total_steps, base_lr, kind, warmup_steps, final_fraction) for s in range(start, stop))


def threshold_fraction(kind: str, x: float, beta: float = 1.0) -> float:
    """Closed-form threshold schedules d(x)/D for progress x in [0, 1] of the pruning window.

    s-lats: the normalised integral of a cosine LR, sin(πx)/π + x;
    pgh: homotopy, Δd ∝ β^x (1 + cos πx) (β = 1 gives s-lats); constant: D from the start;
    linear: a straight ramp.
    """
    x = min(max(x, 0.0), 1.0)
    if kind == "constant":
        return 1.0
    if kind == "linear":
        return x
    if kind == "s-lats":
        return math.sin(math.pi * x) / math.pi + x
    if kind == "pgh":
        return _pgh_integral(x, beta) / _pgh_integral(1.0, beta)
    raise ValueError(f"unknown threshold schedule {kind!r}")


def _pgh_integral(x: float, beta: float) -> float:
    """∫_0^x β^u (1 + cos πu) du in closed form."""
    a = math.log(beta)
    exp_part = x if abs(a) < 1e-12 else (math.exp(a * x) - 1.0) / a
    z = complex(a, math.pi)
    cos_part = ((complex(math.e) ** (z * x) - 1.0) / z).real
    return exp_part + cos_part


def cubic_ramp(x: float) -> float:
    """1 − (1 − x)³ for progress x clamped to [0, 1]: fast at first, flat at the end (Zhu & Gupta)."""
    return 1.0 - (1.0 - min(max(x, 0.0), 1.0)) ** 3


def cubic_sparsity(step: int, start: int, end: int, final: float, initial: float = 0.0) -> float:
    """Gradual magnitude pruning (Zhu & Gupta): s_t = s_f + (s_i − s_f)(1 − (t − t0)/(t1 − t0))³."""
    if step < start:
        return 0.0
    return initial + (final - initial) * cubic_ramp((step - start) / max(end - start, 1))
