import contextlib
import io
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = Path(os.environ.get("SPARSEPIPE_MNIST", REPO.parent / "shared" / "data" / "mnist"))


@pytest.fixture(scope="session")
def digits():
    from compress.data import load_data

    return load_data("digits", seed=0)


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    if not (SHARED_MNIST / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"MNIST IDX files not found in {SHARED_MNIST} (../shared/data/mnist is absent)")
    return SHARED_MNIST


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
