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
