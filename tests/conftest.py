import contextlib
import io
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
# A class-balanced real MNIST subset committed with the tests (provenance: tests/mnist_subset/README.md),
# so a fresh clone without ../shared runs every MNIST test; ../shared/data/mnist is for benchmarks.
MNIST_SUBSET = REPO / "tests" / "mnist_subset"


@pytest.fixture(scope="session")
def digits():
    from compress.data import load_data

    return load_data("digits", seed=0)


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    """The committed MNIST subset: 300 train and 100 test images per digit, as gzipped IDX files."""
    return MNIST_SUBSET


def cli(*args) -> SimpleNamespace:
    """`sparsepipe ARGS` in this process (for tests about the pipeline, not about process start-up):
    returncode, stdout, stderr."""
    from deploy.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def pruned_mlp(data, hidden: list[int], sparsity: float):
    """An MLP for `data` with `sparsity` of every layer's smallest weights zeroed (eval mode), and its
    prunable layers."""
    import torch

    from compress.models import MLP
    from compress.pruners.magnitude import magnitude_masks
    from compress.selection import LayerRule, select_layers

    torch.manual_seed(0)
    model = MLP(data.input_shape, data.num_classes, hidden).eval()
    layers = select_layers(model, LayerRule())
    with torch.no_grad():
        for n, m in magnitude_masks(model, layers, sparsity, "layer").items():
            model.get_submodule(n).weight.mul_(m)
    return model, layers
