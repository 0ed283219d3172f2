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
def _attribute(owner: nn.Module, attr: str, value, outside_only: bool = False) -> Iterator[None]:
    """`owner`.`attr` set to `value`; with `outside_only`, `owner` itself still runs with its own value
    (a module the trace keeps whole, run when a branch's condition is evaluated), so that only code
    outside it sees the probe."""
    name = attr.partition("[")[0]
    old = getattr(owner, name)
    set_count(owner, attr, value)
    own_forward = owner.__dict__.get("forward")
    if outside_only:
        forward = owner.forward

        def run(*args, **kwargs):
            probe = getattr(owner, name)
            setattr(owner, name, old)
            try:
                return forward(*args, **kwargs)
            finally:
                setattr(owner, name, probe)
        owner.forward = run
    try:
        yield
    finally:
        setattr(owner, name, old)
        if outside_only:
            if own_forward is None:
                del owner.forward
            else:
                owner.forward = own_forward


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


Check = tuple[tuple[str, ...], str, str, int, int]  # (node names, module path, attribute, channel count, per)
_STEP = 7919  # between the probe values of a batch: a value derived from one (+1, -1) is none of the others


def _large(i: int) -> int:
    return _PROBE + _STEP * i


def _small(size: int) -> int:
    """A second probe, below any threshold a branch could test (`if self.width > 2`, `max(self.w, 3)`)."""
    return 1 if size != 1 else 2


def problem(model: nn.Module, trace: Callable[[], fx.GraphModule], nodes: tuple[str, ...], path: str, attr: str,
            size: int, per: int = 1) -> str | None:
    """None when `path`.`attr` of `model` gives each of `nodes` (reshapes, splits, slices) its channel
    count `size` (in one argument) and nothing else in the traced model (eval and train mode); otherwise
    why not, in a few words. With `per` > 1 the attribute holds `per` times the count (CSPNet's split
    at `self.expand_chs // 2`). It is set to a huge and to a tiny count in turn: the trace must not
    change but for those arguments, which must follow."""
    return _verdicts(model, trace, [(nodes, path, attr, size, per)], alone=True)[0]


def problems(model: nn.Module, trace: Callable[[], fx.GraphModule], checks: list[Check]) -> list[str | None]:
    """`problem` for many checks at the cost of one: every attribute is set at once to its own probe
    value, and each check is settled by where its value shows up. A check whose value shows up nowhere
    or twice in one node fails as it would alone; anything the batch cannot pin on one check (a value
    computed from two attributes, a probe value in a node the check does not name, a changed trace)
    sends every check to `problem` one by one."""
    attrs = [(path, attr) for _, path, attr, _, _ in checks]
    if len(checks) >= 2 and len(set(attrs)) == len(attrs):  # one attribute probed twice: alone
        out = _verdicts(model, trace, checks, alone=False)
        if out is not None:
            return out
    return [problem(model, trace, *c) for c in checks]


def _verdicts(model: nn.Module, trace: Callable[[], fx.GraphModule], checks: list[Check],
              alone: bool) -> list[str | None] | None:
    """Each check's verdict (None: proved), or None when a batch (`alone` False) cannot tell."""
    out: list[str | None] = [None] * len(checks)
    where = [f"{path}.{attr}" if path else attr for _, path, attr, _, _ in checks]
    for training in (False, True):
        with _mode(model, training):
            base = _signature(trace)
            moved = []
            for value in (lambda i, size: _large(i), lambda i, size: _small(size)):
                with ExitStack() as stack:
                    for i, (nodes, path, attr, size, per) in enumerate(checks):
                        # no node named: the attribute of a module the trace keeps whole (num_heads)
                        stack.enter_context(_attribute(model.get_submodule(path), attr, value(i, size) * per,
                                                       outside_only=not nodes))
                    moved.append(_signature(trace))
        if base is None or any(m is None or [s[:3] for s in base] != [s[:3] for s in m] or
                               any(len(a[3]) != len(b[3]) for a, b in zip(base, m)) for m in moved):
            return [f"{where[0]} changes how the model traces"] if alone else None
        large_of = {_large(i): i for i in range(len(checks))}
        changes = [(name, leaf, x, y) for (name, *_, before), (_, *_, after) in zip(base, moved[0])
                   for leaf, (x, y) in enumerate(zip(before, after)) if x != y]
        spots: dict[tuple[str, int], int] = {}  # (node, argument leaf) -> the check whose probe shows there
        wrong = set()
        for name, leaf, x, y in changes:
            i = 0 if alone else large_of.get(y)
            fits = i is not None and y == _large(i) and x == checks[i][3] and (training or name in checks[i][0])
            if not fits and not alone:
                return None  # a derived value, or another check's probe where that check reads nothing
            if not fits:
                wrong.add(i)
            spots[(name, leaf)] = i
        for i, (nodes, _, _, _, _) in enumerate(checks):
            names = [name for (name, _), j in spots.items() if j == i]
            if len(names) != len(nodes) or len(set(names)) != len(names):
                out[i] = out[i] or f"{where[i]} is read {'nowhere in it' if not names else 'elsewhere too'}"
            elif i in wrong:
                out[i] = out[i] or f"{where[i]} is not what fixes it"
        for (name, *_, before), (_, *_, after) in zip(base, moved[1]):
            for leaf, (x, y) in enumerate(zip(before, after)):
                i = spots.get((name, leaf))
                if i is None and x != y and not alone:
                    return None
                if (i is None and x != y) or (i is not None and y != _small(checks[i][3])):
                    i = 0 if i is None else i
                    out[i] = out[i] or f"{where[i]} is not what fixes it (at a small count)"
    return out
