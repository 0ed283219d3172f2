"""The run configuration: one TOML file, validated before any work starts.

Sections: [data] [model] [prune] [train] [export] [validate] [gate], plus top-level
`name` and `seed`. Every field is documented (see `sparsepipe config-reference`).
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from compress.data import DataConfig
from compress.errors import UserError
from compress.models import ModelConfig
from compress.pruners import PruneConfig
from compress.schema import opt, parse, reference, to_dict
from compress.train import TrainConfig

from .export import ExportConfig
from .formats import BLOCKS
from .gate import GateConfig
from .validate import ValidateConfig

CONFIG_VERSION = 1


@dataclass
class ConvertConfig:
    format: Literal["best", "csr", "bsr"] = opt("best", "Per-layer storage: csr, bsr (best block size per layer) "
                                                "or best (the smaller of the two per layer).")
    block_sizes: list[list[int]] = opt([list(b) for b in BLOCKS], "BSR block sizes to try, [rows, cols].", lo=1)

    def check(self, where: str) -> None:
        if not self.block_sizes or any(len(b) != 2 for b in self.block_sizes):
            raise UserError(f"{where}.block_sizes: expected a non-empty list of [rows, cols] pairs")


@dataclass
class RunConfig:
    name: str = opt("run", "Run name; the default output folder is runs/NAME.")
    seed: int = opt(0, "Seed for weight init, data order and the digits split.", lo=0)
    data: DataConfig = opt(DataConfig(), "Dataset.")
    model: ModelConfig = opt(ModelConfig(), "Model.")
    prune: PruneConfig = opt(PruneConfig(), "Pruning method and layers.")
    train: TrainConfig = opt(TrainConfig(), "Training.")
    convert: ConvertConfig = opt(ConvertConfig(), "Sparse weight storage.")
    export: ExportConfig = opt(ExportConfig(), "ONNX export.")
    validate: ValidateConfig = opt(ValidateConfig(), "Validation in onnxruntime.")
    gate: GateConfig = opt(GateConfig(), "Regression thresholds.")


def parse_override(item: str) -> tuple[list[str], object]:
    """'section.key=value' → (['section', 'key'], value); the value is read as TOML, else as a string."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {item!r}: expected section.key=value")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(table: dict, overrides: list[str]) -> dict:
    for item in overrides:
        keys, value = parse_override(item)
        node = table
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {item!r}: {k!r} is not a section")
        node[keys[-1]] = value
    return table


def load_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Read, override and validate a run config; relative data.root is resolved from the working directory."""
    path = Path(path)
    try:
        table = tomllib.loads(path.read_text())
    except OSError as e:
        raise UserError(f"{path}: cannot read config ({e.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: invalid TOML ({e})") from None
    table.pop("config_version", None)
    cfg = parse(RunConfig, apply_overrides(table, list(overrides)), path.name)
    if cfg.data.root:
        cfg.data.root = str(Path(cfg.data.root).expanduser().resolve())
    return cfg


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):  # an inline table, e.g. one of prune.filter.layer_ratios
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def to_toml(table: dict, prefix: str = "") -> str:
    """A nested dict of scalars/lists as TOML (enough for resolved configs)."""
    scalars = [f"{k} = {_toml_value(v)}" for k, v in table.items() if not isinstance(v, dict)]
    out = "\n".join(scalars) + ("\n" if scalars else "")
    for k, v in table.items():
        if isinstance(v, dict):
            name = f"{prefix}{k}"
            out += f"\n[{name}]\n" + to_toml(v, name + ".")
    return out


def resolved_table(cfg: RunConfig) -> dict:
    return {"config_version": CONFIG_VERSION, **to_dict(cfg)}


def config_reference() -> str:
    """The Markdown table of every config field."""
    rows = ["| field | type | default | meaning |", "|---|---|---|---|"] + reference(RunConfig, "")
    return "\n".join(rows) + "\n"
