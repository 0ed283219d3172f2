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


def _timing_free(report: dict) -> dict:
    """A report without what depends on timing or on how training was logged (the CLI's rows carry more)."""
    out = {k: v for k, v in report.items() if k not in ("latency", "artifacts", "training")}
    out["variants"] = {k: {f: x for f, x in v.items() if f != "latency"} for k, v in report["variants"].items()}
    out["export"] = {k: {f: x for f, x in v.items() if f != "considered"} for k, v in report["export"].items()}
    out["final rows"] = {k: {f: rows[f] for f in ("epoch", "test_accuracy", "sparsity")}
                         for k, rows in report["training"].items()}
    return out


def test_own_loop_example_and_the_cli_write_the_same_report(tmp_path):
    """tools/own_loop_example.py (a plain PyTorch loop on digits + LATS from the API, then the deploy
    half) and `sparsepipe run` on the config it records: the same report, timings aside."""
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    own, cli = tmp_path / "own", tmp_path / "cli"
    # what is chosen by timing (the channel cut's widths, sparse compute per layer) is fixed for both,
    # so nothing in the comparison is timed
    res = subprocess.run([sys.executable, str(REPO / "tools" / "own_loop_example.py"), "--out", str(own),
                          "--epochs", "8", "--set", "freeze.latency_check=false", "--set", "export.compute=false"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=540, env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    report = json.loads((own / "report" / "report.json").read_text())
    assert report["method"] == "lats" and report["model"] == "mlp" and report["data"] == "digits"
    assert report["sparsity"]["global"] == pytest.approx(0.9, abs=0.02)
    assert report["gate"]["passed"] and report["sparse"]["agreement_with_torch"] > 0.99
    assert report["sparse"]["accuracy"] > 0.85 and report["dense"]["accuracy"] > 0.9
    assert report["pruner"]  # the LATS summary travelled with the model
    for rel in ("frozen/model.json", "sparse/manifest.json", "onnx/sparse.onnx", "report/junit.xml",
                "report/report.md", "train/sparse/metrics.jsonl"):
        assert (own / rel).is_file(), rel
    config = (own / "config.toml").read_text()
    assert 'method = "lats"' in config and "target_sparsity = 0.9" in config

    res = subprocess.run([sys.executable, "-m", "deploy", "run", str(own / "config.toml"), "--out", str(cli)],
                         cwd=REPO, capture_output=True, text=True, timeout=540, env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    mine = report
    theirs = json.loads((cli / "report" / "report.json").read_text())
    assert _timing_free(mine) == _timing_free(theirs)
    assert mine["structure"]["channels_removed"] > 0  # the comparison covers a channel cut too


def test_attach_pruner_checks_options_like_the_config():
    model = MLP((1, 8, 8), 10, [16])
    with pytest.raises(UserError, match=r"prune.lats: threshold_final: expected a value in \(0.0, 1000.0\]"):
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
