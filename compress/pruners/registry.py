"""Pruning methods by name: a module registers its class with `@register_pruner("name")`.

The class carries its options as a dataclass `Options` (None: it takes none); the config then
holds a `[prune.name]` table of those options and `prune.method = "name"` builds the class.
Built-in methods are the modules of this package, imported on the first lookup, so adding one
is adding one module. A user's class works either way: registered by name from their own code
(before the config is built), or named in the config as 'package.module:Class' with options
from [prune.custom].
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING, Callable, TypeVar

from ..errors import UserError
from ..imports import load_object
from ..schema import parse
from .base import Pruner

if TYPE_CHECKING:
    from ..config.prune import PruneConfig

P = TypeVar("P", bound=type[Pruner])

_REGISTRY: dict[str, type[Pruner]] = {}
_BUILTINS_LOADED = False


def register_pruner(name: str) -> Callable[[P], P]:
    """Class decorator: make a Pruner subclass the method `name` (its options: `[prune.name]`)."""
    def add(cls: P) -> P:
        if not (isinstance(cls, type) and issubclass(cls, Pruner)):
            raise TypeError(f"register_pruner({name!r}): {cls!r} is not a subclass of Pruner")
        known = _REGISTRY.get(name)
        if known is not None and known.__qualname__ != cls.__qualname__:
            raise ValueError(f"register_pruner: {name!r} is already {known.__module__}.{known.__qualname__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls
    return add


register_pruner("dense")(Pruner)


def _load_builtins() -> None:
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    package = __name__.rpartition(".")[0]
    for info in pkgutil.iter_modules(importlib.import_module(package).__path__):
        importlib.import_module(f"{package}.{info.name}")


def registered_pruners() -> dict[str, type[Pruner]]:
    """Every method by name: the built-ins and those registered so far."""
    _load_builtins()
    return dict(sorted(_REGISTRY.items(), key=lambda item: (item[0] != "dense", item[0])))


def option_classes() -> dict[str, type]:
    """The options dataclass of every registered method that takes options, by method name."""
    return {n: c.Options for n, c in registered_pruners().items() if c.Options is not None}


def pruner_class(cfg: PruneConfig) -> type[Pruner]:
    """The class that runs `cfg.method` with its options (a registered name or 'package.module:Class')."""
    registered = registered_pruners().get(cfg.method)
    if registered is not None:
        return registered.class_for(_options(cfg, registered))
    cls = load_object(cfg.method, "prune.method")
    if not (isinstance(cls, type) and issubclass(cls, Pruner)):
        raise UserError(f"prune.method: {cfg.method!r} is not a subclass of compress.pruners.Pruner")
    return cls


def _options(cfg: PruneConfig, cls: type[Pruner]) -> object:
    """The options `cfg` gives a registered method (its defaults if the config was built before it registered)."""
    if cls.Options is None:
        return None
    return cfg.options.get(cfg.method) or cls.Options()


def build_pruner(cfg: PruneConfig) -> Pruner:
    """The configured pruner with its typed options, not yet attached to a model."""
    registered = registered_pruners().get(cfg.method)
    if registered is not None:
        options = _options(cfg, registered)
        return registered.class_for(options)(options)
    cls = pruner_class(cfg)
    if cls.Options is None:
        if cfg.custom:
            raise UserError(f"prune.custom: {cfg.method!r} takes no options (it declares no Options dataclass)")
        return cls()
    return cls(parse(cls.Options, cfg.custom, "prune.custom"))
