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
