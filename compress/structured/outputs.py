"""The tensors of a model's output, whatever its shape (a tensor, or tuples, lists and dicts of them)."""
from __future__ import annotations

import torch


def output_tensors(out) -> list[torch.Tensor]:
    """The tensors of `out` in order (dict values in their order); anything else is left out."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    return [t for o in out for t in output_tensors(o)] if isinstance(out, (list, tuple)) else []
