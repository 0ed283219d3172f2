"""The [prune] section: the method, which layers, and each method's options.

Each method's options are its pruner's `Options` dataclass, declared in the pruner's own module
and found through the registry (`compress.pruners.registry`): `[prune.NAME]` is the table of
method NAME. Loading it imports torch (the pruner modules need it).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from ..pruners.registry import option_classes, registered_pruners
from ..schema import opt, tables
from ..selection import LayerRule


@dataclass
class PruneConfig:
    method: str = opt("lats", "Pruning method: a registered name (the built-ins: dense and the methods whose "
                      "options follow), or a user's Pruner subclass as 'package.module:Class' (its options from "
                      "[prune.custom], parsed into Class.Options).")
    layers: LayerRule = opt(LayerRule(), "Which layers are pruned.")
    custom: dict = opt({}, "Options of a user's pruner class (method 'package.module:Class').")
    options: dict = tables(option_classes, "Each method's options by method name: the table [prune.NAME].")

    def __post_init__(self) -> None:
        self.options = {n: c() for n, c in option_classes().items()} | self.options

    def __setattr__(self, name: str, value: object) -> None:
        """`cfg.lats = LATSOptions(...)` sets `cfg.options["lats"]` (a registered method's table)."""
        options = self.__dict__.get("options")
        if isinstance(options, dict) and name in options:
            options[name] = value
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> object:
        """`cfg.lats` reads `cfg.options["lats"]`: the table of a registered method."""
        options = self.__dict__.get("options", {})
        if name in options:
            return options[name]
        raise AttributeError(f"{type(self).__name__!s} has no attribute or method options {name!r}")

    def check(self, where: str) -> None:
        methods = registered_pruners()
        if self.method not in methods and ":" not in self.method:
            raise UserError(f"{where}.method: unknown method {self.method!r} (expected one of: {', '.join(methods)}, "
                            "or 'package.module:Class')")
