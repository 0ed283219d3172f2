"""Never hand back a slower model: a channel cut is kept only if it measures faster, and the report
flags any exported variant slower than dense."""
import json

from safetensors.torch import load_file

from conftest import REPO, cli
from deploy.pipeline.validate import slower_than_dense

CONFIG = REPO / "configs" / "quickstart.toml"
QUICK = ["--no-progress", "--set", "train.epochs=6", "--set", "validate.runs=20", "--set", "gate.min_sparsity=0",
         "--set", "gate.max_accuracy_drop=1"]


def test_a_cut_that_is_not_fast_enough_is_not_kept_and_the_report_says_so(tmp_path):
    kept, dropped = tmp_path / "kept", tmp_path / "dropped"
    assert cli("run", CONFIG, "--out", kept, *QUICK).returncode == 0
    # the same run, but the cut must be 1000x faster to count: it is measured and not kept
    res = cli("run", CONFIG, "--out", dropped, *QUICK, "--set", "freeze.min_speedup=1000")
    assert res.returncode == 0 and "so the uncut model was kept" in res.stdout
    a = json.loads((kept / "frozen" / "structure.json").read_text())
    b = json.loads((dropped / "frozen" / "structure.json").read_text())
    assert a["latency_check"]["kept"] and a["channels_removed"] > 0
    assert not b["latency_check"]["kept"] and b["keep"] == {} and b["not_kept"]["channels_removed"] == a["channels_removed"]
    assert b["latency_check"]["before_ms"] > 0 and b["latency_check"]["after_ms"] > 0
    full, cut = load_file(str(dropped / "frozen" / "sparse.safetensors")), load_file(str(kept / "frozen" / "sparse.safetensors"))
    assert full["net.1.weight"].shape[0] == 256 > cut["net.1.weight"].shape[0]
    report = json.loads((dropped / "report" / "report.json").read_text())
    assert any("uncut model was kept" in w for w in report["warnings"])
    assert "uncut model was kept" in (dropped / "report" / "report.md").read_text()


def test_variants_slower_than_dense_are_flagged():
    latency = {"dense": {"p50_ms": 1.0}, "sparse": {"p50_ms": 1.2, "ratio_vs_dense": 1.2},
               "sparse-compact": {"p50_ms": 1.02, "ratio_vs_dense": 1.02}, "batch_size": 1, "threads": 1}
    warnings = slower_than_dense(latency)
    assert warnings == ["variant sparse is slower than dense: x1.20 p50 at batch 1, 1 thread(s)"]
