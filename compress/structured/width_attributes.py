"""Is a module attribute really what a reshape's channel count comes from?

torchvision's ViT reshapes its patch embedding with `x.reshape(n, self.hidden_dim, n_h * n_w)`; fx
records only the number. The reshape rule (ops.py) proposes the one int attribute of the calling module
that holds it, and `verify` proves it: the model is traced again, in eval and in train mode, with that
attribute set to a number it cannot otherwise hold. The attribute is accepted only when exactly one
node's arguments change, and only there, from the channel count to that number: then the cut may set
the attribute to the channels kept (split.py proposes the attributes a split
reads the same way). A literal that merely equals the attribute, an attribute also read
for something else (a scale), by two reshapes or by a module called twice, all change nothing or more
than that one place, and the reshape blocks.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
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


def get_count(owner: nn.Module, attr: str) -> int:
    """`owner`.`attr`, or entry i of a tuple or list attribute for "name[i]"."""
    name, _, index = attr.partition("[")
    value = getattr(owner, name)
    return value[int(index.rstrip("]"))] if index else value


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


def problem(model: nn.Module, trace: Callable[[], fx.GraphModule], nodes: tuple[str, ...], path: str, attr: str,
            size: int, per: int = 1) -> str | None:
    """None when `path`.`attr` of `model` gives each of `nodes` (reshapes, splits, slices) its channel
    count `size` (in one argument) and nothing else in the traced model (eval and train mode); otherwise
    why not, in a few words. With `per` > 1 the attribute holds `per` times the count (CSPNet's split
    at `self.expand_chs // 2`)."""
    owner = model.get_submodule(path)
    where = f"{path}.{attr}" if path else attr
    for training in (False, True):
        with _mode(model, training):
            base = _signature(trace)
            with _attribute(owner, attr, _PROBE * per):
                moved = _signature(trace)
        if base is None or moved is None or [s[:3] for s in base] != [s[:3] for s in moved]:
            return f"{where} changes how the model traces"
        changed = [(a, b) for a, b in zip(base, moved) if a != b]
        if len(changed) != len(nodes):
            return f"{where} is read {'nowhere in it' if not changed else 'elsewhere too'}"
        for (name, *_, before), (_, *_, after) in changed:
            spots = [i for i, (x, y) in enumerate(zip(before, after)) if x != y]
            if len(before) != len(after) or len(spots) != 1 or (before[spots[0]], after[spots[0]]) != (size, _PROBE) \
                    or (not training and name not in nodes):
                return f"{where} is not what fixes it"
    return None


Check = tuple[tuple[str, ...], str, str, int, int]  # (node names, module path, attribute, channel count, per)


def problems(model: nn.Module, trace: Callable[[], fx.GraphModule], checks: list[Check]) -> list[str | None]:
    """`problem` for many checks at the cost of one: every attribute is set at once to its own probe
    value, and each check is settled by where its value shows up. A check whose value shows up nowhere,
    in other nodes or more than once in one fails as it would alone; anything the batch cannot attribute
    (a value computed from two attributes, a changed trace) sends every check to `problem` one by one."""
    attrs = [(path, attr) for _, path, attr, _, _ in checks]
    if len(checks) < 2 or len(set(attrs)) < len(attrs):  # one attribute probed twice: alone
        return [problem(model, trace, *c) for c in checks]
    probe_of = {_PROBE + i: i for i in range(len(checks))}
    found: list[list] = [[] for _ in checks]  # per check: (training, node name, value before) of its probe
    for training in (False, True):
        with _mode(model, training):
            base = _signature(trace)
            with ExitStack() as stack:
                for i, (_, path, attr, _, per) in enumerate(checks):
                    stack.enter_context(_attribute(model.get_submodule(path), attr, (_PROBE + i) * per))
                moved = _signature(trace)
        if base is None or moved is None or [s[:3] for s in base] != [s[:3] for s in moved]:
            return [problem(model, trace, *c) for c in checks]
        for (name, *_, before), (_, *_, after) in zip(base, moved):
            if len(before) != len(after):
                return [problem(model, trace, *c) for c in checks]
            for x, y in zip(before, after):
                if x != y and y not in probe_of:  # a value the batch cannot pin on one attribute
                    return [problem(model, trace, *c) for c in checks]
                if x != y:
                    found[probe_of[y]].append((training, name, x))
    out = []
    for (nodes, path, attr, size, _), spots in zip(checks, found):
        where = f"{path}.{attr}" if path else attr
        modes = [[s for s in spots if s[0] is t] for t in (False, True)]
        if any(len(m) != len(nodes) or len({s[1] for s in m}) != len(m) for m in modes):
            out.append(f"{where} is read {'nowhere in it' if not all(modes) else 'elsewhere too'}")
        elif any(s[2] != size for m in modes for s in m) or {s[1] for s in modes[0]} != set(nodes):
            out.append(f"{where} is not what fixes it")
        else:
            out.append(None)
    return out
