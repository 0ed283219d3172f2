"""Never lose a user's work: full disks, folders holding other files, two runs at once, tampering."""
import json
import os
import subprocess

import pytest
from safetensors.torch import load_file, save_file

from compress import atomic
from conftest import REPO, cli
from deploy.pipeline.folder import RunLock

CONFIG = REPO / "configs" / "quickstart.toml"
QUICK = ["--no-progress", "--set", "train.epochs=4", "--set", "validate.runs=10", "--set", "gate.min_sparsity=0",
         "--set", "gate.max_accuracy_drop=1"]


def snapshot(run):
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and p.name != ".lock" and not any(part.endswith(".new") for part in p.parts)}


@pytest.fixture
def small_disk(tmp_path):
    """A 48 MiB tmpfs mounted for this test (needs root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", "-l", str(mount)])


def fill(disk, leave_bytes):
    """Fill the filesystem up to `leave_bytes` of free space; returns the filler file."""
    filler = disk / "filler"
    with open(filler, "wb") as f:
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        f.write(b"\0" * max(free - leave_bytes, 0))
    return filler


@pytest.mark.parametrize("stage", ["train", "export"])
def test_a_full_disk_during_a_forced_stage_keeps_the_previous_outputs(small_disk, stage):
    run = small_disk / "run"
    assert cli("run", CONFIG, "--out", run, *QUICK).returncode == 0
    before = snapshot(run)
    filler = fill(small_disk, 64 * 1024)
    res = cli(stage, run, "--force", "--no-progress")
    assert res.returncode == 2, res.stdout + res.stderr
    assert "no space left on device" in res.stderr and res.stderr.count("\n") == 1
    filler.unlink()
    if stage == "export":
        assert not (run / ".onnx.new").exists()  # a failed export leaves no staging folder behind
    assert snapshot(run) == before  # every previous output byte-identical, manifests included
    res = cli("validate", run, "--force", "--no-progress")
    assert res.returncode == 0 and "gate: PASSED" in res.stdout


def test_out_on_a_folder_of_someone_elses_files(tmp_path):
    mine = tmp_path / "work"
    # their config.toml even looks like a run's (copied from one): still their folder
    theirs = {"config.toml": "config_version = 1\nname = 'mine'\n", "report/report.md": "my notes",
              "train/layers.json": "[1]", "onnx/dense.onnx": "my model"}
    for rel, text in theirs.items():
        (mine / rel).parent.mkdir(parents=True, exist_ok=True)
        (mine / rel).write_text(text)
    for force in ([], ["--force"]):  # --force re-runs stages; it never lets a run into someone else's files
        res = cli("run", CONFIG, "--out", mine, *QUICK, *force)
        assert res.returncode == 2 and "not empty and not a sparsepipe run folder" in res.stderr, res.stderr
        assert res.stderr.count("\n") == 1
    assert {str(p.relative_to(mine)): p.read_text() for p in mine.rglob("*") if p.is_file()} == theirs


def test_a_users_file_added_to_a_run_folder_survives_a_forced_rerun(tmp_path):
    run = tmp_path / "run"
    assert cli("run", CONFIG, "--out", run, *QUICK, "--set", "train.epochs=1", "--set", "gate.min_above_chance=0").returncode == 0
    (run / "train" / "notes.txt").write_text("do not lose me")
    res = cli("train", run, "--force", "--no-progress")
    assert res.returncode == 0 and (run / "train" / "notes.txt").read_text() == "do not lose me"


@pytest.mark.parametrize("place", ["root", "home", "repository"])
def test_out_on_the_root_the_home_or_the_repository_is_refused(tmp_path, monkeypatch, place):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    monkeypatch.chdir(repo)
    out, words = {"root": ("/", "filesystem root"), "home": (str(home), "home folder"),
                  "repository": (".", "root of the current repository")}[place]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    res = cli("run", CONFIG, "--out", out, *QUICK, "--force")
    assert res.returncode == 2 and words in res.stderr and res.stderr.count("\n") == 1, res.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize("where", ["file", "under-file"])
def test_out_at_or_under_a_file(tmp_path, where):
    (tmp_path / "f").write_text("x")
    out = tmp_path / "f" if where == "file" else tmp_path / "f" / "run"
    res = cli("run", CONFIG, "--out", out, *QUICK)
    assert res.returncode == 2 and "--out must name a folder" in res.stderr and res.stderr.count("\n") == 1


def test_a_second_command_on_a_busy_run_folder_is_refused(tmp_path):
    run = tmp_path / "run"
    with RunLock(run):
        res = cli("run", CONFIG, "--out", run, *QUICK)
    assert res.returncode == 2 and f"run folder in use by PID {os.getpid()}" in res.stderr
    assert not (run / "config.toml").exists()


def test_a_tampered_upstream_file_is_named_not_trusted(tmp_path):
    run = tmp_path / "run"
    assert cli("run", CONFIG, "--out", run, *QUICK).returncode == 0
    weights = load_file(str(run / "frozen" / "sparse.safetensors"))
    save_file({k: v.normal_() if v.is_floating_point() else v for k, v in weights.items()},
              str(run / "frozen" / "sparse.safetensors"))  # same shapes, dense random values
    for stage in ("convert", "export", "validate"):
        res = cli(stage, run, "--force", "--no-progress")
        assert res.returncode == 2, res.stdout
        assert "frozen/sparse.safetensors: changed since stage 'freeze' wrote it" in res.stderr
    # the same edit with freeze's stage.json re-stamped: every later stage runs, and the report refuses
    # to claim the pruned sparsity for the dense weights that would ship
    manifest = json.loads((run / "frozen" / "stage.json").read_text())
    manifest["outputs"]["frozen/sparse.safetensors"] = atomic.sha256_file(run / "frozen" / "sparse.safetensors")
    (run / "frozen" / "stage.json").write_text(json.dumps(manifest))
    res = cli("run", CONFIG, "--out", run, *QUICK)  # convert, export and validate re-run on the new weights
    assert res.returncode == 2, res.stdout
    assert "frozen/sparsity.json: claims" in res.stderr and "sparse/weights.safetensors ships 0.00%" in res.stderr
    assert res.stderr.count("\n") == 1


def test_files_get_the_umasks_mode(tmp_path):
    run = tmp_path / "run"
    old = os.umask(0o022)
    try:
        assert cli("run", CONFIG, "--out", run, *QUICK).returncode == 0
    finally:
        os.umask(old)
    for rel in ("config.toml", "frozen/sparse.safetensors", "onnx/sparse.onnx", "report/report.json"):
        assert (run / rel).stat().st_mode & 0o777 == 0o644, rel
    assert json.loads((run / "report" / "report.json").read_text())["gate"]["passed"]


def test_a_rerun_with_other_layers_selects_them_afresh(tmp_path):
    run = tmp_path / "run"
    assert cli("run", CONFIG, "--out", run, *QUICK).returncode == 0
    assert json.loads((run / "train" / "layers.json").read_text()) == ["net.1", "net.3", "net.5"]
    res = cli("run", CONFIG, "--out", run, *QUICK, "--set", "prune.layers.exclude=['net.5']")
    assert res.returncode == 0
    assert json.loads((run / "train" / "layers.json").read_text()) == ["net.1", "net.3"]
    report = json.loads((run / "report" / "report.json").read_text())
    assert set(report["sparsity"]["per_layer"]) == {"net.1", "net.3"}
