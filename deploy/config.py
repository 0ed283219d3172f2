"""The run configuration: one TOML file, validated before any work starts.

Sections: [data] [model] [prune] [train] [export] [validate] [gate], plus top-level
`name` and `seed`. Every field is documented (see `sparsepipe config-reference`).
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from compress.config.data import DataConfig
from compress.config.model import ModelConfig
from compress.config.prune import PruneConfig
from compress.config.train import TrainConfig
from compress.errors import UserError
from compress.limits import load_toml
from compress.schema import opt, parse, reference, to_dict

from .sections import ConvertConfig, ExportConfig, FreezeConfig, GateConfig, ValidateConfig

CONFIG_VERSION = 1
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


@dataclass
class RunConfig:
    name: str = opt("run", "Run name; the default output folder is runs/NAME (letters, digits, '.', '_', '-').")
    seed: int = opt(0, "Seed for weight init, data order and the digits split.", lo=0, hi=2**32 - 1)
    data: DataConfig = opt(DataConfig(), "Dataset.")
    model: ModelConfig = opt(ModelConfig(), "Model.")
    prune: PruneConfig = opt(PruneConfig(), "Pruning method and layers.")
    train: TrainConfig = opt(TrainConfig(), "Training.")
    freeze: FreezeConfig = opt(FreezeConfig(), "Freezing: the channel cut and its latency check.")
    convert: ConvertConfig = opt(ConvertConfig(), "Sparse weight storage.")
    export: ExportConfig = opt(ExportConfig(), "ONNX export.")
    validate: ValidateConfig = opt(ValidateConfig(), "Validation in onnxruntime.")
    gate: GateConfig = opt(GateConfig(), "Regression thresholds.")


    def check(self, where: str) -> None:
        if not NAME.fullmatch(self.name) or self.name in (".", ".."):
            raise UserError(f"{where}: name: {self.name!r} is not a plain folder name (letters, digits, '.', '_', "
                            "'-'; at most 100 characters, no path)")


def parse_override(item: str) -> tuple[list[str], object]:
    """'section.key=value' → (['section', 'key'], value); the value is read as TOML, else as a string."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {item!r}: expected section.key=value")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except (tomllib.TOMLDecodeError, RecursionError):
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
    table = load_toml(path, "config")
    table.pop("config_version", None)
    cfg = parse(RunConfig, apply_overrides(table, list(overrides)), path.name)
    if cfg.data.root:
        cfg.data.root = str(Path(cfg.data.root).expanduser().resolve())
    if cfg.model.weights:
        cfg.model.weights = str(Path(cfg.model.weights).expanduser().resolve())
    return cfg


def to_toml(table: dict) -> str:
    """A resolved config table as TOML."""
    return tomli_w.dumps(table)


def resolved_table(cfg: RunConfig) -> dict:
    return {"config_version": CONFIG_VERSION, **to_dict(cfg)}


def config_reference() -> str:
    """The Markdown table of every config field."""
    rows = ["| field | type | default | meaning |", "|---|---|---|---|"] + reference(RunConfig, "")
    return "\n".join(rows) + "\n"
