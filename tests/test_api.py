"""The Python API: a pruner in your own loop (compress.api), the deploy half on its result (deploy.api)."""
import json
import subprocess
import sys

import pytest
import torch

from compress.api import attach_pruner
from compress.errors import UserError
from compress.models import MLP
from conftest import REPO


def test_own_loop_example_writes_a_gated_report(tmp_path):
    """tools/own_loop_example.py: plain PyTorch loop on digits + LATS from the API, then the deploy half."""
    out = tmp_path / "own"
    res = subprocess.run([sys.executable, str(REPO / "tools" / "own_loop_example.py"), "--out", str(out),
                          "--epochs", "8"], cwd=tmp_path, capture_output=True, text=True, timeout=540,
                         env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["method"] == "lats" and report["model"] == "mlp" and report["data"] == "digits"
    assert report["sparsity"]["global"] == pytest.approx(0.9, abs=0.02)
    assert report["gate"]["passed"] and report["sparse"]["agreement_with_torch"] > 0.99
    assert report["sparse"]["accuracy"] > 0.85 and report["dense"]["accuracy"] > 0.9
    assert report["pruner"]  # the LATS summary travelled with the model
    for rel in ("frozen/model.json", "sparse/manifest.json", "onnx/sparse.onnx", "report/junit.xml",
                "report/report.md", "train/sparse/metrics.jsonl"):
        assert (out / rel).is_file(), rel
    config = (out / "config.toml").read_text()
    assert 'method = "lats"' in config and "target_sparsity = 0.9" in config


def test_attach_pruner_checks_options_like_the_config():
    model = MLP((1, 8, 8), 10, [16])
    with pytest.raises(UserError, match=r"prune.lats: threshold_final: expected a value in \(0.0, inf\]"):
        attach_pruner(model, "lats", epochs=1, steps_per_epoch=1, lr=0.1, threshold_final=-1.0)
    with pytest.raises(UserError, match="unknown method 'nope'"):
        attach_pruner(model, "nope", epochs=1, steps_per_epoch=1, lr=0.1)
    pruner = attach_pruner(model, "gmp", epochs=1, steps_per_epoch=10, lr=0.1, sparsity=0.5, start=0.0, end=0.5)
    assert pruner.layers == ["net.1", "net.3"]
    for step in range(10):
        pruner.after_step(step, 0.1)
    frozen = pruner.freeze()
    w = torch.cat([frozen.get_submodule(n).weight.flatten() for n in pruner.layers])
    assert float((w == 0).float().mean()) == pytest.approx(0.5, abs=1e-3)


def test_deploy_refuses_a_model_its_description_does_not_fit(tmp_path):
    from deploy.api import deploy_pruned
    model = MLP((1, 8, 8), 10, [16])
    with pytest.raises(UserError, match="does not fit model 'mlp'"):
        deploy_pruned(model, model, tmp_path / "r", {"model": {"name": "mlp", "hidden": [32]}},
                      overrides=["prune.method=magnitude"])
