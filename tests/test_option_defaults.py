"""Every option's default passes the option's own checks (range, choices, the class's check()): a
default outside its documented range would be taken silently, since only given values are checked."""
import dataclasses
import typing

import pytest

from compress.pruners import option_classes
from compress.schema import _check_range, field_path, parse
from deploy.config import RunConfig


def option_dataclasses() -> dict[str, type]:
    """Every pruner's Options and every config section, by the path a user writes."""
    found = {f"prune.{name}": cls for name, cls in option_classes().items()}
    stack = [("", RunConfig)]
    while stack:
        prefix, cls = stack.pop()
        found[prefix or "run"] = cls
        obj = cls()
        for f in dataclasses.fields(cls):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                stack.append((f"{prefix}.{f.name}".lstrip("."), type(value)))
    return found


CLASSES = option_dataclasses()


def test_the_walk_finds_the_sections_and_the_methods():
    assert {"train", "freeze", "prune", "gate", "prune.greg", "prune.lats", "prune.movement"} <= set(CLASSES)


@pytest.mark.parametrize("path", sorted(CLASSES))
def test_every_default_is_in_range_and_a_valid_choice(path):
    cls = CLASSES[path]
    hints = typing.get_type_hints(cls)
    obj = cls()
    for f in dataclasses.fields(cls):
        value = getattr(obj, f.name)
        _check_range(value, f.metadata, field_path(path, f.name))
        if typing.get_origin(hints[f.name]) is typing.Literal:
            assert value in typing.get_args(hints[f.name]), f"{path}.{f.name}: default {value!r} is no choice"
    if hasattr(obj, "check"):
        obj.check(path)


@pytest.mark.parametrize("path", sorted(p for p in CLASSES if p.startswith("prune.")))
def test_a_methods_defaults_parse_as_given_values(path):
    """Writing every default out explicitly gives the same options (each value goes through the checks)."""
    cls = CLASSES[path]
    table = {f.name: getattr(cls(), f.name) for f in dataclasses.fields(cls)}
    assert parse(cls, table, path) == cls()
