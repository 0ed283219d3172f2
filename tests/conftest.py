import contextlib
import io
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

# as the CLI does (deploy/cli.py): OpenMP threads that sleep, not spin, so the suite keeps its pace on a
# machine busy with other work; inherited by every subprocess the tests start
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# under pytest-xdist (tools/test.sh runs one worker per core): one thread per worker, or the workers'
# OpenMP pools fight over the same cores
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

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


def fixed_timer(p50_ms, default: float = 1.0):
    """A `deploy.latency.Timer` that runs nothing and reports fixed timings, so a timing decision is
    deterministic: `p50_ms` maps a session's name to its p50 in ms (others: `default`), or is a function
    (name, session, input array) -> ms. `timer.calls` lists the session names of every call."""
    from deploy.latency import summarize

    def ms(name, session, x) -> float:
        return p50_ms(name, session, x) if callable(p50_ms) else p50_ms.get(name, default)

    def timer(sessions, x, *, warmup: int = 0, runs: int = 1, **_) -> dict:
        timer.calls.append(list(sessions))
        out = {n: summarize([ms(n, s, x)] * max(runs, 1)) for n, s in sessions.items()}
        for stats in out.values():
            stats["throughput_per_s"] = len(x) * 1000.0 / stats["mean_ms"]
        return out

    timer.calls = []
    return timer
