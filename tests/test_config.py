import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compress.errors import UserError
from deploy.config import RunConfig, config_reference, load_config, to_toml, resolved_table
from conftest import REPO


def write(tmp_path, text):
    p = tmp_path / "run.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_config_is_valid(path):
    cfg = load_config(path)
    assert cfg.name == path.stem


def test_shipped_configs_load():
    qs = load_config(REPO / "configs" / "quickstart.toml")
    assert qs.data.name == "digits" and qs.prune.method == "lats"
    mn = load_config(REPO / "configs" / "mnist-lenet5-lats.toml")
    assert mn.model.name == "lenet5" and mn.data.root.endswith("mnist")


@pytest.mark.parametrize("text, names", [
    ("[train]\nepoch = 3\n", ["run.toml: train.epoch: unknown field", "epochs"]),
    ("[train]\nepochs = 'three'\n", ["run.toml: train.epochs: expected an integer", "'three'"]),
    ("[prune.magnitude]\nsparsity = 1.0\n", ["prune.magnitude.sparsity", "[0.0, 1.0)", "1.0"]),
    ("[prune]\nmethod = 'nope'\n", ["prune.method", "'nope'", "lats"]),
    ("[data]\nname = 'imagenet'\n", ["data.name", "'imagenet'", "digits"]),
    ("[model]\nhidden = [64, 0]\n", ["model.hidden", "0"]),
    ("bogus = 1\n", ["run.toml: bogus: unknown field"]),
    ("[train\n", ["invalid TOML"]),
])
def test_bad_fields_name_the_problem(tmp_path, text, names):
    with pytest.raises(UserError) as e:
        load_config(write(tmp_path, text))
    msg = str(e.value)
    assert "\n" not in msg
    for part in names:
        assert part in msg


def test_overrides_are_typed(tmp_path):
    cfg = load_config(write(tmp_path, "name = 'x'\n"),
                      ["train.epochs=7", "model.hidden=[32, 16]", "prune.method=magnitude", "data.name=digits"])
    assert cfg.train.epochs == 7 and cfg.model.hidden == [32, 16] and cfg.prune.method == "magnitude"
    with pytest.raises(UserError, match="section.key=value"):
        load_config(write(tmp_path, ""), ["train.epochs"])
    with pytest.raises(UserError, match="train.epochs"):
        load_config(write(tmp_path, ""), ["train.epochs=0"])


def test_filter_layer_ratios_are_tables_and_round_trip(tmp_path):
    text = ("[prune]\nmethod = 'filter'\n[[prune.filter.layer_ratios]]\nlayer = 'layers.0.*'\nratio = 0.25\n"
            "[[prune.filter.layer_ratios]]\nlayer = 'fc'\nratio = 0.0\n")
    cfg = load_config(write(tmp_path, text))
    assert [(r.layer, r.ratio) for r in cfg.prune.filter.layer_ratios] == [("layers.0.*", 0.25), ("fc", 0.0)]
    again = load_config(write(tmp_path, to_toml(resolved_table(cfg))))
    assert again.prune.filter.layer_ratios == cfg.prune.filter.layer_ratios
    with pytest.raises(UserError, match=r"prune.filter.layer_ratios\[0\].ratio"):
        load_config(write(tmp_path, "[[prune.filter.layer_ratios]]\nlayer = 'x'\nratio = 1.5\n"))


def test_resolved_config_round_trips_through_toml(tmp_path):
    cfg = load_config(REPO / "configs" / "quickstart.toml")
    p = write(tmp_path, to_toml(resolved_table(cfg)))
    assert load_config(p) == cfg
    cfg.prune.layers.exclude = ['odd "glob"\nwith a newline \\ and a backslash']  # the old writer broke here
    assert load_config(write(tmp_path, to_toml(resolved_table(cfg)))) == cfg


def test_validating_a_config_imports_no_deploy_runtime():
    """Validation stays clear of onnxruntime, onnx and scipy. It imports torch: each method's options
    live in its pruner's module (issue 23), and that module needs torch."""
    import subprocess
    import sys
    code = ("import sys; from deploy.config import load_config, config_reference; import deploy.cli; "
            "load_config('configs/quickstart.toml'); config_reference(); "
            "print(sorted(m for m in ('onnxruntime', 'onnx', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_reference_documents_every_field():
    ref = config_reference()
    for field in ("train.epochs", "prune.lats.threshold_final", "gate.max_accuracy_drop", "data.root",
                  "validate.runs", "prune.layers.exclude"):
        assert f"`{field}`" in ref


@settings(max_examples=60, deadline=None)
@given(st.one_of(st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=5), st.booleans(),
                 st.lists(st.integers(), max_size=3)))
def test_any_value_is_accepted_or_rejected_cleanly(tmp_path_factory, value):
    """Whatever a user writes in a field, the loader either accepts it or raises a one-line UserError."""
    import json
    path = tmp_path_factory.mktemp("h") / "run.toml"
    path.write_text("")
    for field in ("train.epochs", "train.lr", "prune.magnitude.sparsity", "model.hidden", "train.nesterov"):
        try:
            cfg = load_config(path, [f"{field}={json.dumps(value)}"])
        except UserError as e:
            assert "\n" not in str(e) and field.split(".")[-1] in str(e)
        else:
            assert isinstance(cfg, RunConfig)


def test_config_reference_page_is_current():
    """docs/config-reference.md's table is `sparsepipe config-reference`, verbatim: no row missing,
    none left over, same order."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("readme_reference", REPO / "tools" / "readme_reference.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    page = tool.PAGE.read_text()
    start, end = tool.reference_table(page)
    assert page[start:end] == config_reference(), (
        "docs/config-reference.md is out of date: run `.venv/bin/python tools/readme_reference.py`")


def test_readme_python_examples_run(tmp_path, monkeypatch):
    import re
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    for code in blocks:
        exec(compile(code.replace("epochs=20", "epochs=2"), "README.md", "exec"), {})
    assert (tmp_path / "out" / "sparse.onnx").exists()
