"""Is a module attribute really what a reshape's channel count comes from?

torchvision's ViT reshapes its patch embedding with `x.reshape(n, self.hidden_dim, n_h * n_w)`; fx
records only the number. The reshape rule (ops.py) proposes the one int attribute of the calling module
that holds it, and `verify` proves it: the model is traced again, in eval and in train mode, with that
attribute set to a number it cannot otherwise hold. The attribute is accepted only when exactly one
node's arguments change, and only there, from the channel count to that number: then the cut may set
the attribute to the channels kept. A literal that merely equals the attribute, an attribute also read
for something else (a scale), by two reshapes or by a module called twice, all change nothing or more
than that one place, and the reshape blocks.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import fx, nn

_PROBE = 1_000_003  # a channel count no real model holds


@contextmanager
def _mode(model: nn.Module, training: bool) -> Iterator[None]:
    flags = [(m, m.training) for m in model.modules()]
    model.train(training)
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def set_count(owner: nn.Module, attr: str, value: int) -> None:
    """Set `owner`.`attr` to `value`; "shape[0]" sets entry 0 of a tuple or list attribute (timm's
    metaformer Scale: `self.scale.view(self.shape)` with shape = (dim, 1, 1))."""
    name, _, index = attr.partition("[")
    if not index:
        setattr(owner, attr, value)
        return
    old = getattr(owner, name)
    new = list(old)
    new[int(index.rstrip("]"))] = value
    setattr(owner, name, type(old)(new))


@contextmanager
def _attribute(owner: nn.Module, attr: str, value) -> Iterator[None]:
    name = attr.partition("[")[0]
    old = getattr(owner, name)
    set_count(owner, attr, value)
    try:
        yield
    finally:
        setattr(owner, name, old)


def _leaf(a):
    if isinstance(a, fx.Node):
        return ("node", a.name)
    return a if isinstance(a, (int, float, str, bool, type(None))) else repr(type(a))


def _signature(trace: Callable[[], fx.GraphModule]) -> list[tuple] | None:
    """(name, op, target, argument leaves) of every node, or None when the model does not trace."""
    try:
        traced = trace()
    except Exception:
        return None
    out = []
    for n in traced.graph.nodes:
        leaves: list = []
        fx.node.map_aggregate((n.args, n.kwargs), lambda a: leaves.append(_leaf(a)))
        out.append((n.name, n.op, str(n.target), leaves))
    return out


def problem(model: nn.Module, trace: Callable[[], fx.GraphModule], node_name: str, path: str, attr: str,
            size: int) -> str | None:
    """None when `path`.`attr` of `model` gives reshape `node_name` its channel count `size` and nothing
    else in the traced model (eval and train mode); otherwise why not, in a few words."""
    owner = model.get_submodule(path)
    where = f"{path}.{attr}" if path else attr
    for training in (False, True):
        with _mode(model, training):
            base = _signature(trace)
            with _attribute(owner, attr, _PROBE):
                moved = _signature(trace)
        if base is None or moved is None or [s[:3] for s in base] != [s[:3] for s in moved]:
            return f"{where} changes how the model traces"
        changed = [(a, b) for a, b in zip(base, moved) if a != b]
        if len(changed) != 1:
            return f"{where} is read {'nowhere in it' if not changed else 'elsewhere too'}"
        (name, *_, before), (_, *_, after) = changed[0]
        spots = [i for i, (x, y) in enumerate(zip(before, after)) if x != y]
        if len(before) != len(after) or len(spots) != 1 or (before[spots[0]], after[spots[0]]) != (size, _PROBE) \
                or (not training and name != node_name):
            return f"{where} is not what fixes it"
    return None
