"""Model zoo by name. Input shape and class count always come from the data."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .errors import UserError
from .schema import opt


@dataclass
class ModelConfig:
    name: str = opt("mlp", "Model name: mlp, lenet5, or an import path 'package.module:factory' "
                    "(called as factory(input_shape=..., num_classes=...)).")
    hidden: list[int] = opt([256, 256], "mlp: widths of the hidden layers.", lo=1)

    def check(self, where: str) -> None:
        if self.name not in MODELS and ":" not in self.name:
            raise UserError(f"{where}.name: unknown model {self.name!r} "
                            f"(expected one of: {', '.join(MODELS)}, or 'package.module:factory')")


class MLP(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: list[int]):
        super().__init__()
        sizes = [int(torch.tensor(input_shape).prod())] + list(hidden)
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LeNet5(nn.Module):
    """LeNet-5 (conv 6 → conv 16 → fc 120 → fc 84 → classes), ReLU and max-pooling.

    The second conv is padded on small inputs (e.g. 8x8 digits) so the shape still works.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int):
        super().__init__()
        channels, height = input_shape[0], input_shape[1]
        pad2 = 0 if height // 2 >= 10 else 2
        self.features = nn.Sequential(
            nn.Conv2d(channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, padding=pad2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
        )
        with torch.no_grad():
            flat = self.features(torch.zeros(1, *input_shape)).shape[1]
        self.classifier = nn.Sequential(
            nn.Linear(flat, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": lambda cfg, shape, classes: MLP(shape, classes, cfg.hidden),
    "lenet5": lambda cfg, shape, classes: LeNet5(shape, classes),
}


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Instantiate the configured model for data of `input_shape` with `num_classes` classes."""
    if cfg.name in MODELS:
        return MODELS[cfg.name](cfg, tuple(input_shape), num_classes)
    module_name, _, attr = cfg.name.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise UserError(f"model.name: cannot import {cfg.name!r} ({e})") from None
    model = factory(input_shape=tuple(input_shape), num_classes=num_classes)
    if not isinstance(model, nn.Module):
        raise UserError(f"model.name: {cfg.name!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model
