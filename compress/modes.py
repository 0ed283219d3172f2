"""Run a model in eval mode for a moment and give every module its own training flag back."""
from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """`model` in eval mode inside the block (BatchNorm statistics untouched, dropout off); afterwards each
    module has the flag it had before, a frozen BatchNorm inside a training model included, which
    `model.train(was)` would overwrite."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag
