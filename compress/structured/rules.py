"""The channel-rule registry: for each kind of op, one small function saying how channels flow.

A rule is called as `rule(walk, node, module)` for every traced node of its kind (`module` is the
called module for a module call, None for a function or method call) and tells the walk what the
op does with the channels of its inputs, through the walk's verbs:

- `walk.start(node, size, producer=name)`: the op produces a new group of channels (a conv, a Linear);
- `walk.join(name, walk.label[x], "consumer" | "passthrough", x)`: a module reads those channels,
  as inputs (cut its input columns) or one per-channel parameter each (cut its rows);
- `walk.follow(node, x)`: the output carries x's channels on the same axis (element-wise ops);
- `walk.block(node, why)`: the channels of every input must stay whole (the op is not understood).

Modules are looked up by type along the class hierarchy, so a rule for `nn.BatchNorm2d` also
covers a subclass; functions by the callable (`torch.relu`) and methods by name (`"relu"`).
A module type with a rule of its own is kept whole by the tracer (a leaf), so the rule sees the
call, not its insides. Register one for your own module with `register_module_rule` (or the
shortcuts `register_elementwise` / `register_channelwise`); unknown ops block, naming the op.
"""
from __future__ import annotations

from typing import Any, Callable

from torch import nn

Rule = Callable[[Any, Any, "nn.Module | None"], None]

MODULE_RULES: dict[type, Rule] = {}
FUNCTION_RULES: dict[Any, Rule] = {}
# rules for classes of optional libraries, by "module.QualName", so the library is never imported here
NAMED_MODULE_RULES: dict[str, Rule] = {}


def register_module_rule(cls: type, rule: Rule) -> None:
    """Use `rule` for calls of modules of type `cls` (and its subclasses without a rule of their own)."""
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"register_module_rule: expected an nn.Module subclass, got {cls!r}")
    MODULE_RULES[cls] = rule


def register_module_rule_by_name(name: str, rule: Rule) -> None:
    """Use `rule` for modules whose class is `name` ("package.module.ClassName"), without importing it."""
    NAMED_MODULE_RULES[name] = rule


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_function_rule(target: Any, rule: Rule) -> None:
    """Use `rule` for calls of the function `target`, or of the tensor method named `target` (a str)."""
    FUNCTION_RULES[target] = rule


def module_rule(*classes: type) -> Callable[[Rule], Rule]:
    """Decorator form of `register_module_rule` for one or more module types."""
    def add(rule: Rule) -> Rule:
        for cls in classes:
            register_module_rule(cls, rule)
        return rule
    return add


def function_rule(*targets: Any) -> Callable[[Rule], Rule]:
    """Decorator form of `register_function_rule` for one or more functions or method names."""
    def add(rule: Rule) -> Rule:
        for t in targets:
            register_function_rule(t, rule)
        return rule
    return add


def elementwise_rule(walk, node, module) -> None:
    """f(x) applied to each value with f(0) = 0: a removed (zero) channel stays zero."""
    walk.follow(node, walk.first(node))


def channelwise_rule(walk, node, module) -> None:
    """A module with one entry per channel in its `weight` (and `bias`) on channel axis 1, applied to
    each channel alone, mapping a zero channel with zeroed parameters to zero (a per-channel scale)."""
    x = walk.first(node)
    if x in walk.label and walk.axis[x] == 1 and all(per == 1 for _, per in walk.label[x]):
        walk.join(node.target, walk.label[x], "passthrough")
        walk.follow(node, x, reset=True)
    elif x in walk.label:
        walk.block(node, f"{node.target} ({type(module).__name__}) is per channel on axis 1, "
                         f"not on the channel axis {walk.axis[x]}")


def register_elementwise(cls: type) -> None:
    """Declare `cls` element-wise with f(0) = 0 and no per-channel parameters (e.g. a custom activation)."""
    register_module_rule(cls, elementwise_rule)


def register_channelwise(cls: type) -> None:
    """Declare `cls` per channel: `weight` (and `bias`) hold one entry per channel, cut with them."""
    register_module_rule(cls, channelwise_rule)


def rule_for_module(m: nn.Module) -> Rule | None:
    """The rule of `m`'s type or of its nearest registered base class; None when there is none."""
    for cls in type(m).__mro__:
        if cls in MODULE_RULES:
            return MODULE_RULES[cls]
        if _name(cls) in NAMED_MODULE_RULES:
            return NAMED_MODULE_RULES[_name(cls)]
    return None


def has_own_rule(m: nn.Module) -> bool:
    """Whether `m`'s exact type was registered (the tracer then keeps it whole)."""
    return type(m) in MODULE_RULES or _name(type(m)) in NAMED_MODULE_RULES
