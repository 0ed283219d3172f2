"""Cases from the second hostile sweep of issue 21 that need a run folder or user code: each is one
line on stderr, exit 2, and no file sparsepipe did not write is changed."""
import os
import shutil

import pytest

from conftest import REPO
from deploy.cli import main

QUICK = ["--no-progress", "--set", "train.epochs=2", "--set", "validate.runs=5", "--set", "freeze.latency_check=false"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ok") / "run"
    assert main(["run", str(REPO / "configs/quickstart.toml"), "--out", str(out), *QUICK, "--set",
                 "gate.min_sparsity=0", "--set", "gate.max_accuracy_drop=1", "--set", "gate.min_above_chance=0"]) in (0, 1)
    return out


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_an_error_in_the_users_model_code_names_the_factory_file_and_line(tmp_path, capsys):
    code = main(["run", str(REPO / "configs" / "quickstart.toml"), "--out", str(tmp_path / "r"), *QUICK,
                 "--set", "model.name='custom_model:fails_in_training'"])
    err = one_line(capsys)
    assert code == 2 and "model.name: 'custom_model:fails_in_training'" in err
    assert "custom_model.py:" in err and "RuntimeError" in err and "the user's forward has a bug" in err


def test_a_staging_folder_that_is_a_link_is_refused_and_its_target_untouched(finished_run, tmp_path, capsys):
    run, theirs = tmp_path / "run", tmp_path / "theirs"
    shutil.copytree(finished_run, run)
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    os.symlink(theirs, run / ".report.new")
    assert main(["validate", str(run), "--force", "--no-progress"]) == 2
    assert "is a symbolic link, not sparsepipe's staging folder" in one_line(capsys)
    assert (theirs / "notes.txt").read_text() == "mine" and sorted(p.name for p in theirs.iterdir()) == ["notes.txt"]


def test_a_lock_that_is_a_link_to_a_users_file_does_not_make_a_run_folder(finished_run, tmp_path, capsys):
    run, theirs = tmp_path / "run", tmp_path / "theirs.txt"
    shutil.copytree(finished_run, run)
    theirs.write_text("mine")
    (run / ".lock").unlink()
    os.symlink(theirs, run / ".lock")
    assert main(["validate", str(run), "--force", "--no-progress"]) == 2
    assert "not a run folder" in one_line(capsys)
    assert theirs.read_text() == "mine"


def test_a_stage_command_on_a_folder_holding_a_copy_of_a_runs_config_is_refused(finished_run, tmp_path, capsys):
    mine = tmp_path / "mine"
    (mine / "train").mkdir(parents=True)
    shutil.copy(finished_run / "config.toml", mine / "config.toml")
    (mine / "train" / "layers.json").write_text('["my own notes"]')
    assert main(["train", str(mine), "--no-progress"]) == 2
    assert "not a run folder" in one_line(capsys)
    assert (mine / "train" / "layers.json").read_text() == '["my own notes"]'


def restamp(run, rel: str) -> None:
    """Record `rel`'s new hash in the manifest of the stage that wrote it, as a crafted folder would."""
    import json

    from compress import atomic
    manifest = run / rel.split("/")[0] / "stage.json"
    table = json.loads(manifest.read_text())
    table["outputs"][rel] = atomic.sha256_file(run / rel)
    manifest.write_text(json.dumps(table))


def copy(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    return run


def test_csr_values_that_are_not_the_frozen_weights_are_an_error_naming_both(finished_run, tmp_path, capsys):
    import json

    from safetensors.numpy import load_file, save_file

    from compress import atomic
    run = copy(finished_run, tmp_path)
    path = run / "sparse" / "weights.safetensors"
    arrays = {k: (v * 2 if k.endswith(".data") else v) for k, v in load_file(str(path)).items()}
    save_file(arrays, str(path))
    manifest = json.loads((run / "sparse" / "manifest.json").read_text())
    manifest["weights_sha256"] = atomic.sha256_file(path)
    (run / "sparse" / "manifest.json").write_text(json.dumps(manifest))
    restamp(run, "sparse/weights.safetensors")
    restamp(run, "sparse/manifest.json")
    assert main(["validate", str(run), "--force", "--no-progress"]) == 2
    err = one_line(capsys)
    assert "weights.safetensors" in err and "frozen/sparse.safetensors" in err and "disagree" in err


def test_report_sizes_and_counts_are_measured_not_copied(finished_run, tmp_path, capsys):
    import json
    run = copy(finished_run, tmp_path)
    exported = json.loads((run / "onnx" / "export.json").read_text())
    exported["dense"]["bytes"], exported["sparse"]["bytes"] = 1, 2
    (run / "onnx" / "export.json").write_text(json.dumps(exported))
    restamp(run, "onnx/export.json")
    structure = json.loads((run / "frozen" / "structure.json").read_text())
    structure["macs_after"] = structure["params_after"] = 1
    (run / "frozen" / "structure.json").write_text(json.dumps(structure))
    restamp(run, "frozen/structure.json")
    (run / "report" / "report.json").unlink()  # the report read below is the one this validate writes
    assert main(["validate", str(run), "--force", "--no-progress"]) in (0, 1)
    report = json.loads((run / "report" / "report.json").read_text())
    assert report["size"]["dense_onnx_bytes"] == (run / "onnx" / "dense.onnx").stat().st_size
    assert report["size"]["sparse_onnx_bytes"] == (run / "onnx" / "sparse.onnx").stat().st_size
    assert report["structure"]["macs_after"] > 1 and report["structure"]["params_after"] > 1


def test_a_stage_record_naming_a_file_outside_the_run_is_refused_before_reading_it(finished_run, tmp_path, capsys):
    import json
    run = copy(finished_run, tmp_path)
    table = json.loads((run / "sparse" / "stage.json").read_text())
    table["outputs"]["../../outside.bin"] = "0" * 64
    (run / "sparse" / "stage.json").write_text(json.dumps(table))
    assert main(["export", str(run), "--force", "--no-progress"]) == 2
    assert "outside the run folder" in one_line(capsys)


def test_an_output_folder_that_is_a_link_to_a_users_folder_is_not_written_through(finished_run, tmp_path, capsys):
    run, theirs = copy(finished_run, tmp_path), tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "report.md").write_text("my own report")
    shutil.rmtree(run / "report")
    os.symlink(theirs, run / "report")
    assert main(["validate", str(run), "--force", "--no-progress"]) == 2
    assert "symbolic link inside the run folder" in one_line(capsys)
    assert (theirs / "report.md").read_text() == "my own report"


class _Samples:
    """A user's Dataset without stored labels: (x, y) item by item."""
    def __init__(self, xs, ys):
        self.xs, self.ys = xs, ys

    def __len__(self):
        return len(self.xs)

    def __getitem__(self, i):
        return self.xs[i], self.ys[i]


def test_float_labels_and_samples_of_different_shapes_are_one_line_errors():
    import torch

    from compress.errors import UserError
    from compress.loader import batches
    floats = _Samples([torch.zeros(1, 4, 4)] * 4, [0.0, 1.5, 2.0, 3.0])
    with pytest.raises(UserError, match="labels are torch.float"):
        list(batches(floats, 4, shuffle=False, num_classes=4))
    uneven = _Samples([torch.zeros(1, 4, 4), torch.zeros(1, 3, 4)], [0, 1])
    with pytest.raises(UserError, match=r"different shapes in one batch: \[1, 4, 4\] and \[1, 3, 4\]"):
        list(batches(uneven, 2, shuffle=False, num_classes=2))


@pytest.mark.parametrize("change", [{"input_shape": "abc"}, {"variants": []}, {"num_classes": 10**9}])
def test_a_crafted_frozen_model_description_is_one_line(finished_run, tmp_path, capsys, change):
    import json
    run = copy(finished_run, tmp_path)
    spec = json.loads((run / "frozen" / "model.json").read_text())
    (run / "frozen" / "model.json").write_text(json.dumps({**spec, **change}))
    restamp(run, "frozen/model.json")
    assert main(["export", str(run), "--force", "--no-progress"]) == 2
    assert "not a frozen model description as sparsepipe writes it" in one_line(capsys)


def test_a_class_missing_from_a_user_dataset_without_stored_labels_stops_after_the_first_epoch():
    import torch

    from compress.dataset import Data
    from compress.errors import UserError
    from compress.models import MLP
    from compress.pruners import Pruner
    from compress.train import TrainConfig, train
    xs = [torch.randn(1, 4, 4) for _ in range(12)]
    train_split = _Samples(xs, [i % 3 for i in range(12)])  # classes 0-2 of 4: class 3 never appears
    data = Data(train_split, _Samples(xs[:4], [0, 1, 2, 3]), 4, (1, 4, 4))
    model = MLP((1, 4, 4), 4, [8])
    with pytest.raises(UserError, match="train split has no samples of class 3"):
        train(model, Pruner(), data, TrainConfig(epochs=2, batch_size=4), ["net.1"], progress=False)


def test_a_user_folder_with_a_lock_and_a_versioned_config_is_not_taken_for_a_run(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / ".lock").write_text("")
    (mine / "config.toml").write_text("config_version = 1\n# my own settings\n")
    (mine / "mine.txt").write_text("notes")
    code = main(["run", str(REPO / "configs" / "quickstart.toml"), "--out", str(mine), *QUICK, "--force"])
    assert code == 2 and "not a sparsepipe run folder" in one_line(capsys)
    assert (mine / "config.toml").read_text() == "config_version = 1\n# my own settings\n"
    assert sorted(p.name for p in mine.iterdir()) == [".lock", "config.toml", "mine.txt"]
