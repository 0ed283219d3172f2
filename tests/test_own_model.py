"""Your model, your data: start from a trained weights file, keep it as the dense baseline, stream a
user's dataset, and ship ONNX files that say how to preprocess raw inputs."""
import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from compress.models import MLP
from compress.pruners import Pruner
from compress.train import TrainConfig, evaluate, train
from conftest import REPO, cli

QUICK = ["--no-progress", "--set", "validate.runs=10", "--set", "gate.min_sparsity=0", "--set", "prune.method='magnitude'",
         "--set", "gate.max_accuracy_drop=1"]
CONFIG = REPO / "configs" / "quickstart.toml"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, digits):
    """An MLP trained on digits, saved as a DDP-style .pth and as safetensors; and its test accuracy."""
    torch.manual_seed(1)
    model = MLP(digits.input_shape, digits.num_classes, [256, 256])
    train(model, Pruner(), digits, TrainConfig(epochs=3, lr=0.05), [], progress=False)
    folder = tmp_path_factory.mktemp("weights")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, folder / "mlp.pth")
    save_file(state, str(folder / "mlp.safetensors"))
    accuracy, _ = evaluate(model, digits.test)
    return folder, state, accuracy


@pytest.mark.parametrize("file", ["mlp.pth", "mlp.safetensors"])
def test_a_run_starts_from_the_given_weights_and_keeps_them_as_the_baseline(trained, file, tmp_path):
    folder, state, accuracy = trained
    out = tmp_path / "run"
    res = cli("run", CONFIG, "--out", out, *QUICK, "--set", f"model.weights={json.dumps(str(folder / file))}",
              "--set", "prune.magnitude.sparsity=0.8", "--set", "train.epochs=2")
    assert res.returncode == 0, res.stdout + res.stderr
    r = json.loads((out / "report" / "report.json").read_text())
    assert r["dense"]["source"] == "weights"
    assert r["dense"]["torch_accuracy"] == accuracy and r["dense"]["accuracy"] == accuracy  # not retrained
    frozen = load_file(str(out / "frozen" / "dense.safetensors"))
    assert all(torch.equal(frozen[k], v) for k, v in state.items())  # the exported baseline is the given model
    first = json.loads((out / "train" / "sparse" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["epoch"] == 0 and first["test_accuracy"] == accuracy  # fine-tuning starts from those weights
    assert r["sparsity"]["global"] > 0.75
    assert list((out / "train" / "sparse" / "tensorboard").glob("events.out.tfevents.*"))


def test_torchvision_weights_load_into_the_grey_input_wrapper(tmp_path):
    import torchvision
    from compress.models import ModelConfig, build_model
    from compress.weights import apply_weights, load_weights
    torch.manual_seed(0)
    theirs = torchvision.models.resnet18(num_classes=10)  # keys as torchvision writes them: conv1.weight, ...
    torch.save(theirs.state_dict(), tmp_path / "resnet18.pth")
    ours = build_model(ModelConfig(name="torchvision:resnet18"), (1, 28, 28), 10)  # wrapped: model.conv1.weight
    apply_weights(ours, load_weights(tmp_path / "resnet18.pth"), tmp_path / "resnet18.pth", "torchvision:resnet18")
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(ours.eval()(x), theirs.eval()(x.expand(-1, 3, -1, -1)))


def test_baseline_trained_fine_tunes_the_dense_model_too(trained, tmp_path):
    folder, state, accuracy = trained
    out = tmp_path / "run"
    res = cli("run", CONFIG, "--out", out, *QUICK, "--set", f"model.weights={json.dumps(str(folder / 'mlp.pth'))}",
              "--set", "model.baseline='trained'", "--set", "train.epochs=1")
    assert res.returncode == 0, res.stdout + res.stderr
    r = json.loads((out / "report" / "report.json").read_text())
    assert r["dense"]["source"] == "trained"
    dense = load_file(str(out / "frozen" / "dense.safetensors"))
    assert not torch.equal(dense["net.1.weight"], state["net.1.weight"])


def test_changing_the_weights_file_reruns_training(trained, tmp_path):
    folder, state, _ = trained
    weights = tmp_path / "w.safetensors"
    save_file(state, str(weights))
    args = ["run", CONFIG, "--out", tmp_path / "run", *QUICK, "--set", f"model.weights={json.dumps(str(weights))}",
            "--set", "train.epochs=1"]
    assert cli(*args).returncode == 0
    assert cli(*args).stdout.count("up to date, skipped") == 5
    save_file({k: v * 0.5 for k, v in state.items()}, str(weights))  # same name, other content
    assert "[1/5] train: done" in cli(*args).stdout


def test_shipped_onnx_carries_its_preprocessing_and_raw_images_get_the_reported_accuracy(tmp_path):
    import onnxruntime as ort
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    out = tmp_path / "run"
    assert cli("run", CONFIG, "--out", out, *QUICK, "--set", "train.epochs=3").returncode == 0
    r = json.loads((out / "report" / "report.json").read_text())
    bunch = load_digits()  # the raw test images, as a deployer has them: 8x8 grey, values 0..16
    _, idx = train_test_split(np.arange(len(bunch.target)), test_size=0.2, random_state=0, stratify=bunch.target)
    raw, labels = bunch.images[idx].astype(np.float32)[:, None], bunch.target[idx]
    for name in ("dense.onnx", "sparse.onnx", "sparse-compact.onnx"):
        session = ort.InferenceSession(str(out / "onnx" / name), providers=["CPUExecutionProvider"])
        pre = json.loads(session.get_modelmeta().custom_metadata_map["sparsepipe.preprocessing"])
        mean, std = np.array(pre["mean"], np.float32)[:, None, None], np.array(pre["std"], np.float32)[:, None, None]
        x = (raw * pre["scale"] - mean) / std
        accuracy = float((session.run(None, {"input": x})[0].argmax(1) == labels).mean())
        variant = "dense" if name == "dense.onnx" else "sparse"
        assert accuracy == pytest.approx(r[variant]["accuracy"], abs=1 / len(labels))
    assert r["preprocessing"] == pre


def test_a_users_dataset_factory(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO / "tests")  # the factory module sits in the working directory, no PYTHONPATH
    out = tmp_path / "run"
    res = cli("run", CONFIG, "--out", out, *QUICK, "--set", "data.name='user_data:digits_factory'",
              "--set", "train.epochs=2", "--set", "data.workers=2")
    assert res.returncode == 0, res.stdout + res.stderr
    r = json.loads((out / "report" / "report.json").read_text())
    assert r["dense"]["samples"] == 397 and r["dense"]["accuracy"] > 0.5  # learned from the streamed data


@pytest.mark.parametrize("factory,words", [
    ("user_data:raises", "raised RuntimeError: the user's bucket is unreachable"),
    ("user_data:wrong_type", "not a sized torch.utils.data.Dataset"),
    ("user_data:empty", "returned an empty train dataset"),
    ("user_data:few_classes", "outside the 5 declared classes"),
    ("user_data:missing", "cannot import 'user_data:missing'"),
    ("user_data:exits", "data.name: 'user_data:exits' called exit(0) instead of returning"),
    ("user_data:huge_classes", "num_classes 1000000000, expected an integer in [2, 100000]"),
])
def test_bad_user_datasets_are_one_line_errors(factory, words, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO / "tests")
    res = cli("run", CONFIG, "--out", tmp_path / "run", *QUICK, "--set", f"data.name='{factory}'",
              "--set", "train.epochs=1")
    assert res.returncode == 2, res.stdout + res.stderr
    assert words in res.stderr and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr


class Payload:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize("kind,words", [
    ("missing", "file not found"),
    ("list", "not a state_dict"),
    ("pickle", "not a weights-only state_dict"),
    ("other-architecture", "does not fit model 'mlp'"),
    ("nan", "holds NaN or inf"),
    ("garbage", "cannot load"),
    ("huge", "a weights file of this model can hold"),
    ("fifo", "not a regular file"),
])
def test_bad_weights_files_are_one_line_errors_and_write_nothing(trained, kind, words, tmp_path):
    folder, state, _ = trained
    path = tmp_path / ("w.safetensors" if kind == "nan" else "w.pth")
    if kind == "list":
        torch.save([torch.zeros(3)], path)
    elif kind == "pickle":
        torch.save({"net.1.weight": Payload()}, path)
    elif kind == "other-architecture":
        torch.save({k: v[:10] if k.startswith("net.1") else v for k, v in state.items()}, path)
    elif kind == "nan":
        save_file({**state, "net.1.bias": torch.full_like(state["net.1.bias"], float("nan"))}, str(path))
    elif kind == "garbage":
        path.write_bytes(b"\x00garbage")
    elif kind == "huge":  # 4x the model's bytes and more: refused from its size, before torch.load reads it
        with open(path, "wb") as f:
            f.truncate(4 * sum(v.numel() * 4 for v in state.values()) + (2 << 20))
    elif kind == "fifo":
        os.mkfifo(path)  # would block torch.load forever
    out = tmp_path / "run"
    res = cli("run", CONFIG, "--out", out, *QUICK, "--set", f"model.weights={json.dumps(str(path))}")
    assert res.returncode == 2, res.stdout + res.stderr
    assert words in res.stderr and str(path) in res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr and "pwned" not in res.stdout
    assert not out.exists()  # checked before anything is written
