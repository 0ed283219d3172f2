"""Undo a cut in place: every module and parameter keeps its identity, so references held elsewhere
(an optimizer, a hook, a user's handle on a layer) still point into the model after the undo."""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

_DICTS = ("_parameters", "_buffers", "_modules")


def snapshot(modules: Iterable[nn.Module]) -> Callable[[], None]:
    """A function that puts `modules` back as they are now: their attributes, submodules, parameters and
    buffers (the same objects, holding today's values). A cut replaces tensors and modules and adds to
    biases in place; both are undone."""
    saved = []
    for m in dict.fromkeys(modules):
        state = {k: dict(v) if k in _DICTS else v for k, v in m.__dict__.items()}
        tensors = [(t, t.detach().clone()) for t in (*m._parameters.values(), *m._buffers.values()) if t is not None]
        saved.append((m, state, tensors))

    def restore() -> None:
        with torch.no_grad():
            for m, state, tensors in saved:
                m.__dict__.clear()
                m.__dict__.update({k: dict(v) if k in _DICTS else v for k, v in state.items()})
                for t, data in tensors:
                    t.data = data
    return restore
