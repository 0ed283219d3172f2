"""The whole pipeline through the real CLI, on the bundled digits data."""
import json
import shutil
import xml.etree.ElementTree as ET

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, cli
from deploy.formats import load_sparse

# freeze.latency_check off: the channel cut is always kept, whatever the machine's load (the timed
# choice itself is tested with fixed timings in test_latency_guard.py)
QUICK = ["--set", "validate.runs=30", "--no-progress", "--set", "freeze.latency_check=false"]


sparsepipe = cli


@pytest.fixture
def own_run(run_dir, tmp_path):
    """A private copy of the shared run folder, for tests that change it."""
    copy = tmp_path / "qs"
    shutil.copytree(run_dir, copy)
    return copy


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "qs"
    res = sparsepipe("run", REPO / "configs" / "quickstart.toml", "--out", out, *QUICK, "--set", "gate.min_sparsity=0.5")
    assert res.returncode == 0, res.stderr
    assert "gate: PASSED" in res.stdout and "accuracy (onnxruntime)" in res.stdout
    return out


def test_report_contract(run_dir):
    r = json.loads((run_dir / "report" / "report.json").read_text())
    for v in ("dense", "sparse"):
        assert 0.8 < r[v]["accuracy"] <= 1.0 and 0.8 < r[v]["torch_accuracy"] <= 1.0
    assert 0.5 < r["sparsity"]["global"] < 1.0
    assert set(r["sparsity"]["per_layer"]) == {"net.1", "net.3", "net.5"}
    assert r["latency"]["dense"]["p50_ms"] > 0 and r["latency"]["ratio"] > 0
    assert r["size"]["sparse_bytes"] < r["size"]["dense_bytes"]
    assert r["gate"]["passed"] is True and r["gate"]["failures"] == []
    assert r["variants"]["sparse-compact"]["accuracy"] == r["sparse"]["accuracy"]
    assert r["variants"]["sparse-compute"]["agreement_with_torch"] >= 0.999
    assert r["size"]["sparse_compact_onnx_bytes"] < r["size"]["sparse_onnx_bytes"]
    for rel in r["artifacts"].values():
        for p in ([rel] if isinstance(rel, str) else rel):
            assert (run_dir / p).exists(), p
    assert ET.parse(run_dir / "report" / "junit.xml").getroot().get("failures") == "0"
    assert "Gate: **PASSED**" in (run_dir / "report" / "report.md").read_text()


def test_frozen_weights_csr_and_onnx_agree(run_dir):
    frozen = load_file(str(run_dir / "frozen" / "sparse.safetensors"))
    csr = load_sparse(run_dir / "sparse", model_id="mlp")
    sparsity = json.loads((run_dir / "frozen" / "sparsity.json").read_text())
    masks = load_file(str(run_dir / "frozen" / "masks.safetensors"))
    # at ~92% some hidden neurons lost every input weight: the freeze stage cut them out (harvest)
    structure = json.loads((run_dir / "frozen" / "structure.json").read_text())
    assert structure["channels_removed"] > 0 and structure["macs_after"] < structure["macs_before"]
    spec = json.loads((run_dir / "frozen" / "model.json").read_text())
    assert spec["variants"]["sparse"] == {"weights": "sparse.safetensors", "structure": "structure.json"}
    for name in sparsity["layers"]:
        w = frozen[f"{name}.weight"]
        assert torch.equal(csr[name].view(torch.int32), w.view(torch.int32))
        # the masks describe the weights as stored: same shape, 1 exactly where a weight is nonzero
        assert masks[name].shape == w.shape and torch.equal(masks[name].bool(), w != 0)
        # the sparsity is the pruner's, counted before the cut: at least the zeros still stored
        assert (w == 0).sum() / w.numel() <= sparsity["per_layer"][name] + 1e-9
    assert structure["params_after"] < structure["params_before"]
    export = json.loads((run_dir / "onnx" / "export.json").read_text())
    assert export["sparse"]["max_abs_diff_vs_torch"] < 1e-4
    assert export["sparse"]["initializer_sparsity"] > 0.5


def test_rerun_skips_and_changed_gate_reruns_only_validate(own_run):
    run_dir = own_run
    res = sparsepipe("run", REPO / "configs" / "quickstart.toml", "--out", run_dir, *QUICK, "--set", "gate.min_sparsity=0.5")
    assert res.returncode == 0 and res.stdout.count("up to date, skipped") == 5
    res = sparsepipe("run", REPO / "configs" / "quickstart.toml", "--out", run_dir, *QUICK, "--set", "gate.min_sparsity=0.999")
    assert res.returncode == 1, res.stderr
    assert res.stdout.count("up to date, skipped") == 4 and "[5/5] validate: done" in res.stdout
    assert "gate: FAILED" in res.stdout and "global sparsity" in res.stdout
    assert json.loads((run_dir / "report" / "report.json").read_text())["gate"]["passed"] is False


def test_stage_commands_and_corrupt_output_is_rerun(own_run):
    run_dir = own_run
    res = sparsepipe("convert", run_dir)
    assert res.returncode == 0 and "up to date" in res.stdout
    (run_dir / "sparse" / "weights.safetensors").write_bytes(b"corrupted")
    res = sparsepipe("convert", run_dir)
    assert res.returncode == 0 and "convert: done" in res.stdout
    assert load_sparse(run_dir / "sparse")  # readable again


def test_bad_input_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nepoch = 3\n")
    res = sparsepipe("run", bad, "--out", tmp_path / "r")
    assert res.returncode == 2
    assert res.stderr.strip() == "sparsepipe: error: bad.toml: train.epoch: unknown field (expected one of: " \
        "epochs, finetune_epochs, batch_size, optimizer, lr, lr_schedule, lr_milestones, lr_gamma, warmup_epochs, " \
        "momentum, nesterov, weight_decay, label_smoothing, distill, distill_temperature, device)"
    assert not (tmp_path / "r").exists()  # validated before any work
    res = sparsepipe("freeze", tmp_path)
    assert res.returncode == 2 and "not a run folder" in res.stderr and "Traceback" not in res.stderr


def test_method_dense_and_magnitude(tmp_path):
    res = sparsepipe("run", REPO / "configs" / "quickstart.toml", "--out", tmp_path / "d", *QUICK, "--set", "prune.method=dense",
                     "--set", "gate.min_sparsity=0")
    assert res.returncode == 0, res.stderr
    r = json.loads((tmp_path / "d" / "report" / "report.json").read_text())
    assert r["sparsity"]["global"] == 0 and r["sparse"]["accuracy"] == r["dense"]["accuracy"]
    res = sparsepipe("run", REPO / "configs" / "quickstart.toml", "--out", tmp_path / "m", *QUICK,
                     "--set", "prune.method=magnitude", "--set", "prune.magnitude.sparsity=0.8",
                     "--set", "gate.min_sparsity=0.75")
    assert res.returncode == 0, res.stdout + res.stderr
    r = json.loads((tmp_path / "m" / "report" / "report.json").read_text())
    assert r["sparsity"]["global"] == pytest.approx(0.8, abs=1e-3)


@pytest.mark.slow
def test_mnist_lenet5_lats(tmp_path, mnist_root):
    res = sparsepipe("run", REPO / "configs" / "mnist-lenet5-lats.toml", "--out", tmp_path / "mn", "--no-progress",
                     "--set", f"data.root={json.dumps(str(mnist_root))}",
                     "--set", "validate.runs=30",  # 15 epochs of the 3000-image subset: ~350 steps
                     "--set", "gate.min_sparsity=0.5", "--set", "gate.max_accuracy_drop=0.03")
    assert res.returncode == 0, res.stdout + res.stderr
    r = json.loads((tmp_path / "mn" / "report" / "report.json").read_text())
    assert r["dense"]["accuracy"] > 0.95 and r["sparse"]["accuracy"] > 0.92  # measured: 96.4% and 94.7%
    assert r["sparsity"]["global"] > 0.5 and r["sparse"]["agreement_with_torch"] > 0.999


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_int8_variants_are_validated_side_by_side(tmp_path, mode):
    res = sparsepipe("run", REPO / "configs" / "quickstart.toml", "--out", tmp_path / mode, *QUICK, "--set", f"export.int8=\"{mode}\"")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "accuracy int8 (onnxruntime)" in res.stdout
    r = json.loads((tmp_path / mode / "report" / "report.json").read_text())
    for v in ("dense", "sparse"):
        q = r["variants"][f"{v}-int8"]
        assert abs(q["accuracy"] - r[v]["accuracy"]) < 0.03 and q["latency"]["p50_ms"] > 0
        assert q["agreement_with_torch"] > 0.95 and (tmp_path / mode / "onnx" / f"{v}-int8.onnx").exists()
    if mode == "static":  # uint8 activations, int8 weights: onnxruntime's fast x86 path (S8S8 ran 2.7x slower)
        import onnx
        graph = onnx.load(str(tmp_path / mode / "onnx" / "dense-int8.onnx")).graph
        zero_points = {i.name: i.data_type for i in graph.initializer if i.name.endswith("zero_point")}
        quantized = [n for n in graph.node if n.op_type == "QuantizeLinear"]
        assert quantized and {zero_points[n.input[2]] for n in quantized} == {onnx.TensorProto.UINT8}


def test_freeze_reads_the_squashed_weights_without_replaying_training(own_run):
    """The train stage leaves each model squashed (pruner.freeze()); freeze rebuilds no pruner: with
    [prune] and [train] changed to what could not replay this checkpoint, it still gives the same weights."""
    import tomllib
    from deploy.config import to_toml
    before = json.loads((own_run / "frozen" / "sparsity.json").read_text())
    assert load_file(own_run / "train" / "sparse" / "frozen.safetensors")  # written by the train stage
    pruner = json.loads((own_run / "train" / "sparse" / "pruner.json").read_text())
    table = tomllib.loads((own_run / "config.toml").read_text())
    table["prune"]["method"], table["train"]["epochs"] = "str", 1
    (own_run / "config.toml").write_text(to_toml(table))
    res = sparsepipe("freeze", own_run, "--force")
    assert res.returncode == 0, res.stderr
    after = json.loads((own_run / "frozen" / "sparsity.json").read_text())  # counted before any channel cut
    assert after["per_layer"] == before["per_layer"] and after["global"] == before["global"] > 0.5
    assert after["pruner"] == before["pruner"] == pruner and after["method"] == "str"


def test_distillation_teaches_the_pruned_model_from_the_dense_one(run_dir, tmp_path):
    """train.distill reaches the pruned model's loss, with the run's dense model as the teacher; the
    dense model trains as before."""
    out = tmp_path / "kd"
    res = sparsepipe("run", REPO / "configs" / "quickstart.toml", "--out", out, *QUICK, "--set", "gate.min_sparsity=0.5",
                     "--set", "train.distill=0.7")
    assert res.returncode in (0, 1), res.stderr  # the gate's verdict is not the point here
    metrics = {d: [[json.loads(line) for line in (f / "train" / v / "metrics.jsonl").read_text().splitlines()]
                   for v in ("dense", "sparse")] for d, f in (("plain", run_dir), ("kd", out))}
    assert metrics["kd"][0] == metrics["plain"][0]
    assert metrics["kd"][1][0]["train_loss"] != metrics["plain"][1][0]["train_loss"]
