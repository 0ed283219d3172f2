"""Never hand back a slower model: a channel cut is kept only if it measures faster, and the report
flags any exported variant slower than dense."""
import json
import shutil

import numpy as np
import pytest

from safetensors.torch import load_file

from conftest import REPO, cli, fixed_timer
from deploy.config import load_config
from deploy.pipeline import open_run, run_pipeline
from deploy.pipeline.validate import slower_than_dense

CONFIG = REPO / "configs" / "quickstart.toml"
QUICK = ["--no-progress", "--set", "train.epochs=6", "--set", "validate.runs=20", "--set", "gate.min_sparsity=0",
         "--set", "gate.max_accuracy_drop=1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A quickstart run whose pruned MLP has dead hidden units (a channel cut to decide on)."""
    run = tmp_path_factory.mktemp("guard") / "run"
    assert cli("run", CONFIG, "--out", run, *QUICK).returncode == 0
    return run


def refreeze(trained, folder, timings: dict, stages: tuple[str, ...] = ("freeze",)):
    """The trained run's freeze stage (and `stages` after it) again, timed by fixed timings."""
    shutil.copytree(trained, folder)
    run = open_run(folder, progress=False, log=lambda _: None, timer=fixed_timer(timings))
    run_pipeline(run, stages=stages, force=True)
    return json.loads((folder / "frozen" / "structure.json").read_text()), run.timer


@pytest.mark.parametrize("fastest", ["any width", "x8"])
def test_the_harvest_that_times_fastest_is_kept(trained, tmp_path, fastest):
    other = "x8" if fastest == "any width" else "any width"
    structure, timer = refreeze(trained, tmp_path / "run", {"before": 1.0, f"cut-{fastest}": 0.5, f"cut-{other}": 0.6})
    assert ["before", "cut-any width", "cut-x8"] in timer.calls  # both harvests timed beside the uncut model
    check = structure["latency_check"]
    assert check["kept"] and check["candidate"] == fastest and check["ratio"] == 0.5
    assert check["candidates"] == {fastest: 0.5, other: 0.6}
    rounded = [after % 8 == 0 or after == before for before, after in structure["widths"].values()]
    assert all(rounded) if fastest == "x8" else not all(rounded)  # the record is that harvest's
    weights = load_file(str(tmp_path / "run" / "frozen" / "sparse.safetensors"))
    assert {p: weights[f"{p}.weight"].shape[0] for p in structure["widths"]} == \
        {p: after for p, (_, after) in structure["widths"].items()}


def test_a_cut_that_is_not_fast_enough_is_not_kept_and_the_report_says_so(trained, tmp_path):
    structure, _ = refreeze(trained, tmp_path / "run", {"before": 1.0, "cut-any width": 1.2, "cut-x8": 1.1},
                            ("freeze", "convert", "export", "validate"))
    check = structure["latency_check"]
    assert not check["kept"] and check["candidate"] == "x8" and check["ratio"] == pytest.approx(1.1)
    assert structure["keep"] == {} and structure["not_kept"]["channels_removed"] > 0
    assert structure["params_after"] == structure["params_before"]
    full = load_file(str(tmp_path / "run" / "frozen" / "sparse.safetensors"))
    assert [full[f"net.{i}.weight"].shape[0] for i in (1, 3)] == [256, 256]
    report = json.loads((tmp_path / "run" / "report" / "report.json").read_text())
    assert any("x1.10 the latency of the uncut model, so the uncut model was kept" in w for w in report["warnings"])
    assert "uncut model was kept" in (tmp_path / "run" / "report" / "report.md").read_text()


def test_min_speedup_is_the_bar_a_cut_must_clear(trained, tmp_path):
    """freeze.min_speedup 2: the cut must measure below x0.5 — at x0.5 it is not kept, at x0.49 it is."""
    shutil.copytree(trained, tmp_path / "base")
    text = (tmp_path / "base" / "config.toml").read_text().replace("min_speedup = 1.0", "min_speedup = 2.0")
    (tmp_path / "base" / "config.toml").write_text(text)
    kept = {}
    for ratio in (0.5, 0.49):
        structure, _ = refreeze(tmp_path / "base", tmp_path / str(ratio), {"before": 1.0, "cut-any width": ratio,
                                                                          "cut-x8": 0.9})
        kept[ratio] = structure["latency_check"]["kept"]
    assert kept == {0.5: False, 0.49: True}


def test_variants_slower_than_dense_are_flagged():
    latency = {"dense": {"p50_ms": 1.0}, "sparse": {"p50_ms": 1.2, "ratio_vs_dense": 1.2},
               "sparse-compact": {"p50_ms": 1.02, "ratio_vs_dense": 1.02}, "batch_size": 1, "threads": 1}
    warnings = slower_than_dense(latency)
    assert warnings == ["variant sparse is slower than dense: x1.20 p50 at batch 1, 1 thread(s)"]


def _widths(folder) -> list[int]:
    state = load_file(str(folder / "frozen" / "sparse.safetensors"))
    return [int(v.shape[0]) for k, v in sorted(state.items()) if k.endswith("conv1.weight")]


def weights_ms(name, session, x) -> float:
    """A deterministic stand-in for onnxruntime's latency: 1 ms per 10,000 weights in the session's file
    (`_model_path`: onnxruntime's own record of the file a session was made from)."""
    from onnx import load
    return sum(int(np.prod(i.dims)) for i in load(session._model_path).graph.initializer) / 1e4


@pytest.mark.slow
@pytest.mark.parametrize("method", ["filter", "greg"])
def test_latency_target_times_candidate_widths_and_the_cut_model_keeps_them(tmp_path, method):
    """`latency_target` finds its widths by timing cut copies when training starts (here by a timer
    whose latency is the weight count, so the widths do not depend on the machine's load); the freeze
    stage replays them from the checkpoint (no second timing) and the cut model has them."""
    out = tmp_path / method
    overrides = ["model.name='resnet20'", "train.epochs=1", "validate.runs=20", "gate.min_sparsity=0",
                 "gate.max_accuracy_drop=1", "export.compute=false", "export.compact=false",
                 f"prune.method='{method}'", f"prune.{method}.latency_target=2", "prune.greg.granularity='filter'",
                 "freeze.latency_check=false", *(["prune.filter.pow2=true"] if method == "filter" else [])]
    timer = fixed_timer(weights_ms)
    run = open_run(out, load_config(CONFIG, overrides), progress=False, log=lambda _: None, timer=timer)
    run_pipeline(run)
    assert ["model", "cut"] in timer.calls
    report = json.loads((out / "report" / "report.json").read_text())
    pruner = report["pruner"]["sparse"] if "sparse" in report["pruner"] else report["pruner"]
    probes = pruner["latency_probes"]
    assert len(probes) >= 3 and pruner["latency_target"] == 2
    assert pruner["latency_ratio_measured"] <= 1 / 2  # the widths chosen measured at or under 1/target
    assert pruner["latency_ratio_measured"] in [p["latency_ratio"] for p in probes]
    widths = _widths(out)
    assert len(widths) == 10 and sum(widths) < 16 + 3 * (16 + 32 + 64)  # the stem and 9 blocks: cut
    assert (out / "train" / "sparse" / "checkpoint.pt").exists()


def test_latency_target_rejects_a_second_target_and_weight_granularity(tmp_path):
    res = cli("run", CONFIG, "--out", tmp_path / "a", *QUICK, "--set", "prune.method='filter'",
              "--set", "prune.filter.latency_target=2", "--set", "prune.filter.flops_target=2")
    assert res.returncode == 2 and "flops_target or latency_target" in res.stderr
    res = cli("run", CONFIG, "--out", tmp_path / "b", *QUICK, "--set", "prune.method='greg'",
              "--set", "prune.greg.latency_target=2")
    assert res.returncode == 2 and "granularity 'filter'" in res.stderr
    res = cli("run", CONFIG, "--out", tmp_path / "c", *QUICK, "--set", "prune.method='filter'",
              "--set", "prune.filter.latency_target=0.5")
    assert res.returncode == 2 and "factor above 1" in res.stderr


def test_widths_for_latency_searches_every_rounding_and_keeps_the_most_channels_under_the_goal():
    """With a latency that is exactly the MAC ratio, the search must land on a cut measuring at most 1/3
    and keep more channels than any other rounding's best."""
    import torch

    from compress.flops import count_macs
    from compress.models import build_model, ModelConfig
    from compress.structured import channel_groups, widths_for_latency
    from compress.structured.budget import ROUNDINGS, cut_copy, keep_counts

    model = build_model(ModelConfig(name="resnet20"), (1, 8, 8), 10).eval()
    groups = [g for g in channel_groups(model, torch.zeros(2, 1, 8, 8)) if g.prunable]
    dense = count_macs(model, (1, 8, 8))["dense"]
    calls = []

    def mac_ratio(reference, cut):
        calls.append(1)
        return count_macs(cut, (1, 8, 8))["dense"] / dense

    uniform = widths_for_latency(model, groups, 3.0, mac_ratio, refine=0)
    assert uniform["latency_ratio"] <= 1 / 3 and len(calls) == len(uniform["probes"])
    assert {(p["round_to"], p["pow2"]) for p in uniform["probes"]} == set(ROUNDINGS)
    under = [p for p in uniform["probes"] if p["latency_ratio"] <= 1 / 3]
    kept = lambda p: sum(keep_counts(groups, p["ratio"], p["round_to"], p["pow2"]).values())  # noqa: E731
    assert sum(uniform["keep"].values()) == max(kept(p) for p in under) and uniform["refined"] == []
    # refined: channels given back group by group, still measured under the goal, closer to it
    calls.clear()
    found = widths_for_latency(model, groups, 3.0, mac_ratio)
    assert len(calls) == len(found["probes"]) <= len(uniform["probes"]) + 8
    assert found["refined"] and 1 / 3 >= found["latency_ratio"] > uniform["latency_ratio"]
    assert sum(found["keep"].values()) > sum(uniform["keep"].values())
    assert all(found["keep"][k] >= uniform["keep"][k] for k in uniform["keep"])
    assert found["latency_ratio"] == pytest.approx(mac_ratio(model, cut_copy(model, groups, found["keep"])))
    only_pow2 = widths_for_latency(model, groups, 3.0, mac_ratio, pow2=True)
    assert {p["pow2"] for p in only_pow2["probes"]} == {True}
    with pytest.raises(ValueError, match="out of reach"):
        widths_for_latency(model, groups, 1e6, mac_ratio)
