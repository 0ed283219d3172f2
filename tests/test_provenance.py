"""A CI gate is only as good as what it knows it compared: fingerprints of files and code, like-for-like
reference comparisons, and a floor under accuracy."""
import json

from conftest import REPO, cli

CONFIG = REPO / "configs" / "quickstart.toml"
# 2 epochs of LATS to 92% can end at chance: these tests are about provenance, not the gate
QUICK = ["--no-progress", "--set", "train.epochs=2", "--set", "validate.runs=10", "--set", "gate.min_sparsity=0",
         "--set", "gate.max_accuracy_drop=1", "--set", "gate.min_above_chance=0"]


def test_changing_a_factory_modules_code_reruns_training(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = (REPO / "tests" / "user_data.py").read_text()
    (tmp_path / "my_factory.py").write_text(source)
    args = ["run", CONFIG, "--out", tmp_path / "run", *QUICK, "--set", "data.name='my_factory:digits_factory'"]
    assert cli(*args).returncode == 0
    assert cli(*args).stdout.count("up to date, skipped") == 5
    (tmp_path / "my_factory.py").write_text(source + "\n# the user changed their code\n")
    out = cli(*args).stdout
    assert "[1/5] train: done" in out and "[5/5] validate: done" in out


def test_changing_the_data_files_reruns_training(tmp_path):
    import shutil
    data = tmp_path / "mnist"
    shutil.copytree(REPO / "tests", data / "unused")  # any folder: the listing is what is fingerprinted
    args = ["run", CONFIG, "--out", tmp_path / "run", *QUICK, "--set", f"data.root={json.dumps(str(data))}"]
    assert cli(*args).returncode == 0 and cli(*args).stdout.count("up to date, skipped") == 5
    (data / "unused" / "new.txt").write_text("a new file under data.root")
    assert "[1/5] train: done" in cli(*args).stdout


def test_reference_of_another_setup_needs_allow_different(tmp_path):
    run = tmp_path / "run"
    assert cli("run", CONFIG, "--out", run, *QUICK).returncode == 0
    report = json.loads((run / "report" / "report.json").read_text())
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**report, "sparsity": {**report["sparsity"], "per_layer": {"fc": 0.5}}}))
    res = cli("gate", run / "report" / "report.json", "--reference", other)
    assert res.returncode == 2 and "pruned layers" in res.stderr
    assert cli("gate", run / "report" / "report.json", "--reference", other, "--allow-different").returncode == 0


def test_a_model_at_chance_is_flagged_and_fails_the_default_gate(tmp_path):
    import torch
    from safetensors.torch import save_file

    from compress.models import MLP

    zeros = tmp_path / "zeros.safetensors"  # a state_dict of zeros: it predicts one class for every input
    save_file({k: torch.zeros_like(v) for k, v in MLP((1, 8, 8), 10, [256, 256]).state_dict().items()}, str(zeros))
    run = tmp_path / "run"
    res = cli("run", CONFIG, "--out", run, *QUICK, "--set", f"model.weights={json.dumps(str(zeros))}",
              "--set", "prune.method='magnitude'", "--set", "gate.min_above_chance=0.05")
    assert res.returncode == 1 and "warning: dense baseline accuracy" in res.stdout
    assert "sparse accuracy" in res.stdout and "vs chance 0.1000" in res.stdout
    report = json.loads((run / "report" / "report.json").read_text())
    assert any("near chance" in w for w in report["warnings"]) and report["classes"] == 10
    res = cli("run", CONFIG, "--out", run, *QUICK, "--set", f"model.weights={json.dumps(str(zeros))}",
              "--set", "prune.method='magnitude'")
    assert res.returncode == 0  # the config says otherwise (QUICK: min_above_chance = 0): passes
    res = cli("gate", run / "report" / "report.json", "--min-accuracy", "0.5")
    assert res.returncode == 1 and "FAIL  min_accuracy" in res.stdout


def test_a_collapsing_pruner_is_reported_while_training_and_in_the_report(tmp_path):
    run = tmp_path / "run"
    res = cli("run", CONFIG, "--out", run, *QUICK, "--set", "prune.lats.target_sparsity=0",
              "--set", "prune.lats.threshold_final=1.0")
    assert res.returncode == 0
    assert "train sparse: warning: sparsity above 99%" in res.stdout  # said while training, once
    assert res.stdout.count("train sparse: warning: sparsity above 99%") == 1
    report = json.loads((run / "report" / "report.json").read_text())
    assert any(w.startswith("training sparse: sparsity above 99%") for w in report["warnings"])
    assert any(w.startswith("training sparse: accuracy at chance") for w in report["warnings"])
