"""Undo a cut in place: every module and parameter keeps its identity, so references held elsewhere
(an optimizer, a hook, a user's handle on a layer) still point into the model after the undo."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

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


@contextmanager
def python_state_kept(model: nn.Module) -> Iterator[None]:
    """Every module's Python attributes as they were before the block: tracing runs the model's code
    with traced values, and code that caches (LeViT's `attention_bias_cache[str(device)] = ...`) or
    sets attributes would leave traced proxies inside the user's model. Attributes added in the block
    are removed, replaced ones put back, and dicts, lists and sets refilled in place (the same objects)."""
    saved = []
    for m in model.modules():
        state = dict(m.__dict__)
        contents = {k: (v.copy() if not isinstance(v, list) else list(v)) for k, v in state.items()
                    if type(v) in (dict, list, set) and k not in _DICTS}
        saved.append((m, state, contents))
    try:
        yield
    finally:
        for m, state, contents in saved:
            for k in [k for k in m.__dict__ if k not in state]:
                del m.__dict__[k]
            for k, v in state.items():
                if m.__dict__.get(k) is not v:
                    m.__dict__[k] = v
            for k, old in contents.items():
                v = state[k]
                if isinstance(v, list):
                    v[:] = old
                else:
                    v.clear()
                    v.update(old)
