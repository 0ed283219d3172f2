"""Hostile and broken inputs: each is one line naming the problem, exit code 2, nothing left behind."""
import json
import os
import pickle
from pathlib import Path

import pytest

from compress.errors import UserError
from conftest import REPO
from deploy.cli import main


class RunsCode:
    """A pickle payload that would create a file when unpickled."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ok") / "run"
    assert main(["run", str(REPO / "configs/quickstart.toml"), "--out", str(out), "--no-progress",
                 "--set", "train.epochs=10", "--set", "validate.runs=5", "--set", "gate.min_sparsity=0",
                 "--set", "gate.max_accuracy_drop=1"]) == 0
    return out


def config(tmp_path, text, counter=[0]):
    counter[0] += 1
    p = tmp_path / f"bad{counter[0]}.toml"
    p.write_text(text)
    return str(p)


def cases(tmp_path, finished_run):
    """(name, argv, expected words in the one-line error)."""
    truncated = tmp_path / "mnist"
    truncated.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (truncated / name).write_bytes(b"\x00\x00\x08\x03\x00\x00\x00\x05\x00\x00\x00\x1c\x00\x00\x00\x1c" + b"\x00" * 99)
    def idx_folder(name, image_dims, n_labels):
        folder = tmp_path / name
        folder.mkdir()
        header = bytes([0, 0, 8, len(image_dims)]) + b"".join(d.to_bytes(4, "big") for d in image_dims)
        size = 1
        for d in image_dims:
            size *= d
        for split in ("train", "t10k"):
            (folder / f"{split}-images-idx3-ubyte").write_bytes(header + bytes(size))
            (folder / f"{split}-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1]) + n_labels.to_bytes(4, "big")
                                                                + bytes(n_labels))
        return json.dumps(str(folder))

    empty = idx_folder("empty", (0, 28, 28), 0)
    label200 = idx_folder("label200", (5, 28, 28), 5)
    labels = Path(json.loads(label200)) / "train-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-1] + bytes([200]))
    flat = idx_folder("flat", (5, 784), 5)
    corrupt_onnx = tmp_path / "corrupt.onnx"
    corrupt_onnx.write_bytes(b"\x08\x07garbage")
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.toml").write_text('# sparsepipe run folder: this config.toml was written by sparsepipe\n'
                                     'config_version = 0\nname = "x"\n')
    (old / ".lock").write_text("")  # as every run command leaves it
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "report.json").write_bytes(pickle.dumps(RunsCode(tmp_path / "pwned")))
    q = str(REPO / "configs/quickstart.toml")
    bomb = tmp_path / "bomb"
    bomb.mkdir()
    import gzip
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        with gzip.open(bomb / f"{name}.gz", "wb") as f:  # a small header, then far more data than it says
            f.write(b"\x00\x00\x08\x03\x00\x00\x00\x05\x00\x00\x00\x1c\x00\x00\x00\x1c")
            f.write(bytes(64 << 20))
    reference = json.loads((finished_run / "report" / "report.json").read_text())
    other = {**reference, "model": "lenet5", "data": "mnist"}
    (tmp_path / "other.json").write_text(json.dumps(other))
    (tmp_path / "typed.json").write_text(json.dumps({**reference, "sparse": {**reference["sparse"], "accuracy": "high"}}))
    (tmp_path / "a-file").write_text("x")
    junk = tmp_path / "junk.toml"
    junk.write_bytes(b"# " + b"x" * (10 << 20))
    dense_onnx = str(finished_run / "onnx" / "dense.onnx")
    return [
        ("unknown field", ["run", config(tmp_path, "[train]\nepoch = 1\n")], ["train.epoch", "unknown field"]),
        ("mistyped value", ["run", config(tmp_path, "[train]\nlr = 'fast'\n")], ["train.lr", "expected a number"]),
        ("sparsity 1.0", ["run", q, "--set", "prune.magnitude.sparsity=1.0"], ["prune.magnitude.sparsity", "[0.0, 1.0)"]),
        ("negative sparsity", ["run", q, "--set", "prune.lats.target_sparsity=-0.1"], ["target_sparsity", "-0.1"]),
        ("missing data folder", ["run", q, "--set", "data.name=mnist", "--set", f"data.root={json.dumps(str(tmp_path / 'none'))}"],
         ["data.root", "not found"]),
        ("truncated data", ["run", q, "--set", "data.name=mnist", "--set", f"data.root={json.dumps(str(truncated))}"],
         ["train-images-idx3-ubyte", "truncated"]),
        ("empty dataset", ["run", q, "--set", "data.name=mnist", "--set", f"data.root={empty}"], ["split is empty"]),
        ("wrong image shape", ["run", q, "--set", "data.name=mnist", "--set", f"data.root={flat}"],
         ["images have shape [5, 784]", "expected [5, H, W]"]),
        ("unknown dataset", ["run", q, "--set", "data.name=imagenet"], ["data.name", "imagenet"]),
        ("label 200 in MNIST", ["run", q, "--set", "data.name=mnist", "--set", f"data.root={label200}"],
         ["label 200", "outside its 10 classes"]),
        ("unreadable config", ["run", str(tmp_path / "missing.toml")], ["missing.toml", "cannot read config"]),
        ("invalid TOML", ["run", config(tmp_path, "[train\n")], ["invalid TOML"]),
        ("bad --set", ["run", q, "--set", "train.epochs"], ["--set", "section.key=value"]),
        ("not a run folder", ["freeze", str(tmp_path)], ["not a run folder"]),
        ("run folder of another version", ["validate", str(old)], ["config_version 0"]),
        ("stage before its input", ["export", str(tmp_path / "fresh")], ["not a run folder"]),
        ("gate on a pickle", ["gate", str(evil / "report.json")], ["report.json", "cannot read report JSON"]),
        ("binary config", ["run", str(evil / "report.json")], ["report.json", "invalid TOML", "not UTF-8"]),
        ("config from /dev/zero", ["run", "/dev/zero"], ["/dev/zero", "not a regular file"]),
        ("10 MB junk config", ["run", str(junk)], ["junk.toml", "more than the 1048576 allowed"]),
        ("gate on /dev/zero", ["gate", "/dev/zero"], ["/dev/zero", "not a regular file"]),
        ("report nested 100k deep", ["gate", config(tmp_path, "[" * 100_000)], ["cannot read report JSON", "recursion"]),
        ("config nested 100k deep", ["run", config(tmp_path, "a = " + "[" * 100_000)], ["invalid TOML"]),
        ("gate on a missing field", ["gate", str(config(tmp_path, "{}"))], ["missing field 'dense.accuracy'"]),
        ("bad gate flag", ["gate", str(finished_run / "report/report.json"), "--max-accuracy-drop", "2"],
         ["max_accuracy_drop", "[0.0, 1.0]"]),
        ("name with a path", ["run", q, "--set", "name='../../x'"], ["name", "not a plain folder name"]),
        ("absolute name", ["run", q, "--set", "name='/tmp/x'"], ["name", "not a plain folder name"]),
        ("seed past 2^32", ["run", q, "--set", "seed=4294967296"], ["seed", "[0, 4294967295]"]),
        ("seed past 64 bits", ["run", q, "--set", "seed=99999999999999999999"], ["seed", "[0, 4294967295]"]),
        ("NaN learning rate", ["run", q, "--set", "train.lr=nan"], ["train.lr", "finite"]),
        ("infinite threshold", ["run", q, "--set", "prune.lats.threshold_final=1e400"], ["threshold_final", "finite"]),
        ("gzip bomb", ["run", q, "--set", "data.name=mnist", "--set", f"data.root={json.dumps(str(bomb))}"],
         ["train-images-idx3-ubyte.gz", "padded"]),
        ("reference of another model", ["gate", str(finished_run / "report/report.json"), "--reference",
                                        str(tmp_path / "other.json")], ["not comparable", "model 'mlp' vs 'lenet5'"]),
        ("reference with a wrong type", ["gate", str(finished_run / "report/report.json"), "--reference",
                                         str(tmp_path / "typed.json")], ["typed.json", "sparse.accuracy"]),
        ("profile --json at a folder", ["profile", dense_onnx, "--json", str(tmp_path)], ["--json", "is a folder"]),
        ("profile --png under a file", ["profile", dense_onnx, "--png", str(tmp_path / "a-file" / "p.png")],
         ["--png", "is a file"]),
        ("profile with a million threads", ["profile", dense_onnx, "--threads", "1000000"], ["--threads", "up to 1024"]),
        ("gate --junit at a device", ["gate", str(finished_run / "report/report.json"), "--junit", "/dev/null"],
         ["--junit /dev/null", "not a regular file"]),
        ("profile with a huge batch", ["profile", dense_onnx, "--batch", "100000000", "--seconds", "0.01"],
         ["--batch 100000000", "GiB"]),
        ("model factory that raises", ["run", q, "--set", "model.name='custom_model:broken'"],
         ["model.name", "raised"]),
        ("zero block size", ["run", q, "--set", "convert.block_sizes=[[0, 0]]"],
         ["convert.block_sizes", "integers >= 1", "[0, 0]"]),
        ("model factory that exits", ["run", q, "--set", "model.name='custom_model:exits'"],
         ["model.name", "'custom_model:exits' called exit(0)"]),
        ("huge model.hidden", ["run", q, "--set", "model.hidden=[100000000]"],
         ["'mlp'", "parameters, more than", "model.hidden"]),
        ("huge model.width", ["run", q, "--set", "model.name='resnet20'", "--set", "model.width=1e9"],
         ["'resnet20'", "parameters, more than"]),
        ("prune.method not a pruner", ["run", q, "--set", "prune.method='os:getcwd'"],
         ["prune.method", "not a subclass"]),
        ("model factory with another signature", ["run", q, "--set", "model.name='custom_model:no_kwargs'"],
         ["model.name", "TypeError"]),
        # the second hostile sweep (issue 21): values that overflowed, hung or allocated hundreds of GiB
        ("huge learning rate", ["run", q, "--set", "train.lr=1e300"], ["train.lr", "1e+300"]),
        ("huge weight decay", ["run", q, "--set", "train.weight_decay=1e300"], ["train.weight_decay"]),
        ("huge LATS threshold", ["run", q, "--set", "prune.lats.threshold_final=1e300"], ["threshold_final"]),
        ("huge STR s_init", ["run", q, "--set", "prune.str.s_init=1e300"], ["prune.str.s_init"]),
        ("a million latency threads", ["run", q, "--set", "freeze.latency_threads=1000000"], ["latency_threads"]),
        ("a million validate threads", ["run", q, "--set", "validate.threads=1000000"], ["validate.threads"]),
        ("a billion-sample latency batch", ["run", q, "--set", "freeze.latency_batch_size=1000000000"],
         ["freeze.latency_batch_size"]),
        ("a billion-sample compute batch", ["run", q, "--set", "export.compute_batch=1000000000"],
         ["export.compute_batch"]),
        ("100 hidden layers", ["run", q, "--set", f"model.hidden=[{', '.join(['4'] * 100)}]"],
         ["model.hidden", "at most 64"]),
        ("a one-number block", ["run", q, "--set", "prune.magnitude.block=[2]"], ["prune.magnitude.block"]),
        ("a test split too small for every class", ["run", q, "--set", "data.test_fraction=0.001"],
         ["data.test_fraction", "each of the 10 classes"]),
        ("a 100,000-deep --set value", ["run", q, "--set", "train.lr=" + "[" * 100_000], ["train.lr", "..."]),
        ("a model with the wrong class count", ["run", q, "--set", "model.name='custom_model:three_classes'"],
         ["outputs of shape [2, 3]", "[2, 10] is expected"]),
        ("a file name too long", ["gate", str(finished_run / "report" / "report.json"), "--junit",
                                  str(tmp_path / ("j" * 300))], ["File name too long"]),
    ]


def test_bad_inputs(tmp_path, finished_run, capsys):
    results = []
    for name, argv, words in cases(tmp_path, finished_run):
        before = sorted(p.name for p in tmp_path.iterdir())
        code = main(argv + (["--out", str(tmp_path / "out")] if argv[0] == "run" else []))
        err = capsys.readouterr().err.strip()
        ok = (code == 2 and len(err.splitlines()) == 1 and err.startswith("sparsepipe: error: ")
              and all(w in err for w in words) and "Traceback" not in err
              and not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == before)
        results.append((name, ok, code, err))
    assert not (tmp_path / "pwned").exists()  # nothing was unpickled
    bad = [r for r in results if not r[1]]
    assert not bad, "\n".join(f"{n}: exit {c}: {e}" for n, _, c, e in bad)


def test_corrupt_checkpoint_and_crafted_pickle_are_refused(tmp_path, finished_run, capsys):
    import shutil
    import torch
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    ckpt = run / "train" / "sparse" / "checkpoint.pt"
    frozen_before = (run / "frozen" / "sparse.safetensors").read_bytes()
    torch.save({"payload": RunsCode(tmp_path / "pwned")}, ckpt)  # what an attacker would ship
    assert main(["freeze", str(run), "--force"]) == 2
    err = capsys.readouterr().err
    # the swapped file no longer has the hash the train stage recorded: refused before it is opened
    assert "checkpoint.pt: changed since stage 'train' wrote it" in err and "Traceback" not in err
    from compress.train import load_checkpoint
    with pytest.raises(UserError, match="checkpoint.pt: not a loadable sparsepipe checkpoint"):
        load_checkpoint(ckpt)  # and opened anyway, it is refused without being unpickled
    assert not (tmp_path / "pwned").exists()
    assert (run / "frozen" / "sparse.safetensors").read_bytes() == frozen_before  # nothing produced is lost


def test_checkpoint_of_another_architecture(tmp_path, finished_run, capsys):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    import tomllib
    from deploy.config import to_toml
    table = tomllib.loads((run / "config.toml").read_text())
    assert table["model"]["hidden"] == [256, 256]
    table["model"]["hidden"] = [64]
    (run / "config.toml").write_text(to_toml(table))
    # the old checkpoint now faces a different model: freeze must say so, not crash
    from deploy.pipeline import open_run
    from deploy.pipeline.freeze import freeze_stage
    from compress.errors import UserError
    with pytest.raises(UserError, match="checkpoint does not fit model 'mlp'"):
        freeze_stage(open_run(run, progress=False))


def test_corrupt_onnx_and_mismatched_input(tmp_path, finished_run):
    from compress.errors import UserError
    from deploy.latency import make_session
    (tmp_path / "c.onnx").write_bytes(b"\x08\x07garbage")
    with pytest.raises(UserError, match="onnxruntime cannot load this model"):
        make_session(tmp_path / "c.onnx")
    with pytest.raises(UserError, match="ONNX file not found"):
        make_session(tmp_path / "none.onnx")
