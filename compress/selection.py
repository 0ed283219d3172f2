"""Which layers get pruned: a rule resolved once into an explicit, saved list of names."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import torch
from torch import nn

from .errors import UserError
from .schema import opt

LAYER_KINDS = ("conv", "linear")


@dataclass
class LayerRule:
    types: list[str] = opt(["conv", "linear"], "Layer kinds to prune: conv, linear.")
    exclude: list[str] = opt([], "Glob patterns of layer names never pruned (e.g. 'classifier.*').")
    keep_first_dense: bool = opt(False, "Leave the first prunable layer dense.")
    keep_last_dense: bool = opt(False, "Leave the last prunable layer dense.")

    def check(self, where: str) -> None:
        for t in self.types:
            if t not in LAYER_KINDS:
                raise UserError(f"{where}.types: unknown layer kind {t!r} (expected conv or linear)")


LAYER_TYPES = {"conv": (nn.Conv1d, nn.Conv2d, nn.Conv3d), "linear": (nn.Linear,)}


def clean_name(name: str) -> str:
    """Parameter/module names without DDP's or torch.compile's wrapper prefixes."""
    for prefix in ("module.", "_orig_mod."):
        while name.startswith(prefix):
            name = name[len(prefix):]
    return name


def select_layers(model: nn.Module, rule: LayerRule) -> list[str]:
    """Names (wrapper prefixes removed) of the modules whose `weight` the pruner may zero."""
    kinds = tuple(t for k in rule.types for t in LAYER_TYPES[k])
    names = [clean_name(n) for n, m in model.named_modules() if isinstance(m, kinds)]
    if rule.keep_first_dense and names:
        names = names[1:]
    if rule.keep_last_dense and names:
        names = names[:-1]
    names = [n for n in names if not any(fnmatch.fnmatch(n, p) for p in rule.exclude)]
    if not names:
        raise UserError("prune.layers: the selection rule matches no layer of this model")
    return names


def get_module(model: nn.Module, name: str) -> nn.Module:
    """Module by clean name, whether or not the model is wrapped (DDP, compile)."""
    for n, m in model.named_modules():
        if clean_name(n) == name:
            return m
    raise UserError(f"model has no layer named {name!r}")


def layer_weight(model: nn.Module, name: str) -> torch.Tensor:
    """The weight layer `name` computes with: its `weight`, standardised for a weight-standardised
    conv (timm's StdConv2d / ScaledStdConv2d), where a zero in the raw weight is no zero at all."""
    from .structured.std_conv import effective_weight  # here, not at import: structured loads torch.fx

    return effective_weight(get_module(model, name))
