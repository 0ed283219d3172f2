"""Real torchrun processes and a real kill -9: scale-out and crash recovery through the CLI."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO

ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


def run(args, **kw):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600, env=ENV, **kw)


def masks(folder):
    """The pruned model's masks before the freeze stage cuts dead channels (whose count can differ by
    one between runs): |θ| > d for every LATS-reparameterised weight in the final checkpoint."""
    from compress.train import load_checkpoint
    state = load_checkpoint(folder / "train" / "sparse" / "checkpoint.pt")["model"]
    suffix = ".parametrizations.weight.original"
    return {k.removesuffix(suffix): state[k].abs() > state[k.replace("original", "0.threshold")]
            for k in state if k.endswith(suffix)}


@pytest.mark.slow
def test_two_process_gloo_matches_single_process(tmp_path):
    common = ["configs/quickstart.toml", "--no-progress", "--set", "validate.runs=10", "--set", "train.epochs=20"]
    single = run(["-m", "deploy", "run", *common, "--out", tmp_path / "one"])
    assert single.returncode == 0, single.stderr
    ddp = run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "deploy", "run", *common, "--out", tmp_path / "two"])
    assert ddp.returncode == 0, ddp.stdout[-2000:] + ddp.stderr[-2000:]
    a, b = masks(tmp_path / "one"), masks(tmp_path / "two")
    differ = sum(int((a[k] != b[k]).sum()) for k in a)
    total = sum(v.numel() for v in a.values())
    # Same global batch, same data order: only the all-reduce's float summation order differs.
    assert differ / total < 0.005, f"{differ} of {total} mask entries differ"
    ra, rb = (json.loads((tmp_path / d / "report" / "report.json").read_text()) for d in ("one", "two"))
    assert abs(ra["sparsity"]["global"] - rb["sparsity"]["global"]) < 0.002
    assert abs(ra["sparse"]["accuracy"] - rb["sparse"]["accuracy"]) < 0.02
    history = [json.loads(l) for l in (tmp_path / "two" / "train" / "sparse" / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 20  # one writer (rank 0), one line per epoch


@pytest.mark.slow
def test_kill_9_mid_training_then_rerun_resumes_to_the_same_result(tmp_path):
    args = ["-m", "deploy", "run", "configs/quickstart.toml", "--no-progress", "--set", "validate.runs=10",
            "--set", "model.hidden=[512, 512]", "--set", "train.batch_size=16", "--set", "train.epochs=12",
            "--set", "freeze.latency_check=false"]  # the cut chosen by timing may differ between the two runs
    reference = run([*args, "--out", tmp_path / "ref"])
    assert reference.returncode == 0, reference.stderr
    out = tmp_path / "crash"
    proc = subprocess.Popen([sys.executable, *args, "--out", out], cwd=REPO, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = out / ".train.new" / "sparse" / "metrics.jsonl"  # an unfinished stage works beside train/
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "training finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(metrics.read_text().splitlines())
    assert 3 <= done < 12
    assert not (out / "train").exists()  # the stage did not complete: nothing is in place yet
    from compress.train import load_checkpoint
    # never half-written; metrics.jsonl is written just before the checkpoint, so a kill between the
    # two leaves the checkpoint one epoch behind the metrics
    assert load_checkpoint(out / ".train.new" / "sparse" / "checkpoint.pt")["epoch"] in (done - 1, done)
    again = run([*args, "--out", out])
    assert again.returncode == 0, again.stderr
    assert not list(out.rglob("*.tmp"))  # temporaries of the killed run are swept
    assert not (out / ".train.new").exists()  # moved into place
    metrics = out / "train" / "sparse" / "metrics.jsonl"
    rows = [json.loads(l) for l in metrics.read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, 13))
    a, b = masks(tmp_path / "ref"), masks(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    ref_w = load_file(str(tmp_path / "ref" / "frozen" / "sparse.safetensors"))
    got_w = load_file(str(out / "frozen" / "sparse.safetensors"))
    assert all(torch.equal(ref_w[k], got_w[k]) for k in ref_w)
