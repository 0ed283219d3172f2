"""The pruner lifecycle as a Python API, for any training loop.

    pruner = attach_pruner(model, "lats", epochs=E, steps_per_epoch=S, lr=lambda step: ...,
                           threshold_final=0.05)            # options as in [prune.lats]
    optimizer = torch.optim.SGD(optimizer_groups(model, pruner, weight_decay=5e-4), lr=0.1, momentum=0.9)
    pruner.bind_optimizer(optimizer)
    for epoch in range(E):
        pruner.begin_epoch(epoch)
        for x, y in loader:                                  # step counts optimizer steps from 0
            loss = loss_fn(model(x), y); optimizer.zero_grad(); loss.backward()
            pruner.after_backward(step)
            optimizer.step()
            pruner.after_step(step, lr_used_at_this_step)
        pruner.end_epoch(epoch)
    frozen = pruner.freeze()                                 # a plain nn.Module with exact zeros

The deploy half (convert → export → validate → gate) on such a model: `deploy.api.deploy_pruned`.
"""
from __future__ import annotations

import functools
from typing import Callable

import torch
from torch import nn

from .errors import UserError
from .distill import distillation_loss
from .loader import epoch_generator
from .pruners import Pruner, TrainPlan, registered_pruners
from .schema import parse
from .schedules import lr_at
from .selection import LayerRule, select_layers
from .train import optimizer_groups

__all__ = ["attach_pruner", "optimizer_groups", "Pruner", "LayerRule", "select_layers", "registered_pruners",
           "epoch_order", "learning_rates", "distillation_loss"]


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order in which `sparsepipe run` visits the `n` training samples in `epoch` (0-based) under
    `seed`: take mini-batches as consecutive slices of it and your loop sees the CLI's batches."""
    return torch.randperm(n, generator=epoch_generator(seed, epoch))


def learning_rates(base_lr: float, epochs: int, steps_per_epoch: int, kind: str = "cosine",
                   warmup_epochs: int = 0) -> Callable[[int], float]:
    """The learning rate of each optimizer step as `sparsepipe run` sets it ([train] lr, lr_schedule
    'cosine' or 'constant', warmup_epochs), for loops that want the CLI's schedule."""
    if kind not in ("cosine", "constant"):
        raise UserError(f"learning_rates: kind {kind!r} (expected 'cosine' or 'constant')")
    return functools.partial(lr_at, total_steps=epochs * steps_per_epoch, base_lr=base_lr, kind=kind,
                             warmup_steps=warmup_epochs * steps_per_epoch)


def attach_pruner(model: nn.Module, method: str = "lats", *, epochs: int, steps_per_epoch: int,
                  lr: float | Callable[[int], float], layers: LayerRule | list[str] | None = None,
                  input_shape: tuple[int, ...] | None = None, **options) -> Pruner:
    """The registered pruner `method` attached to `model`, ready for its lifecycle hooks.

    `options` are the fields of `[prune.METHOD]` (checked the same way: a bad one is a UserError
    naming it); `lr` is the learning rate of each optimizer step (a float: constant), which the
    schedules of LATS and others follow; `layers` a selection rule or explicit layer names (default:
    every Conv and Linear); `input_shape` one sample's shape, for pruners that trace the model
    (channel methods). Call it before building the optimizer: some pruners add parameters.
    """
    methods = registered_pruners()
    if method not in methods:
        raise UserError(f"method: unknown method {method!r} (expected one of: {', '.join(methods)})")
    cls = methods[method]
    if cls.Options is None:
        if options:
            raise UserError(f"prune.{method}: takes no options, got {', '.join(options)}")
        chosen = None
    else:
        chosen = parse(cls.Options, options, f"prune.{method}")
    pruner = cls.class_for(chosen)(chosen)
    names = layers if isinstance(layers, list) else select_layers(model, layers or LayerRule())
    schedule = lr if callable(lr) else (lambda step: float(lr))
    pruner.attach(model, names, TrainPlan(epochs, steps_per_epoch, schedule, input_shape))
    return pruner
