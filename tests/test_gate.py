import copy
import json
import xml.etree.ElementTree as ET

import pytest

from compress.errors import UserError
from deploy.cli import main
from deploy.gate import GateConfig, check, compare
from deploy.report import junit_xml
from deploy.report_schema import Report


def scores(accuracy: float) -> dict:
    return {"accuracy": accuracy, "torch_accuracy": accuracy, "agreement_with_torch": 1.0,
            "max_abs_diff_vs_torch": 0.0, "mean_abs_diff_vs_torch": 0.0, "samples": 100}


# a report.json as validate writes it, cut down to small values
REPORT_JSON = {"run": "r", "method": "lats", "model": "mlp", "data": "digits", "dense": scores(0.98),
               "sparse": scores(0.97), "variants": {}, "sparsity": {"global": 0.91, "per_layer": {}, "layers_pruned": 3},
               "pruner": {}, "structure": None, "latency": {"ratio": 0.8}, "size": {}, "export": {}, "training": {},
               "versions": {}, "machine": {}, "classes": 10}
REPORT = Report.from_dict(REPORT_JSON)


def with_changes(**paths) -> Report:
    """REPORT with dotted fields changed, e.g. with_changes(**{"sparse.accuracy": 0.95})."""
    d = copy.deepcopy(REPORT_JSON)
    for dotted, value in paths.items():
        *keys, last = dotted.split(".")
        node = d
        for k in keys:
            node = node[k]
        node[last] = value
    return Report.from_dict(d)


def test_a_report_without_its_class_count_fails_the_chance_check_instead_of_passing_it():
    checks = check(with_changes(classes=None), GateConfig())
    chance = next(c for c in checks if c["name"] == "above_chance")
    assert not chance["passed"] and "number of classes" in chance["message"]
    assert all(c["name"] != "above_chance" for c in check(with_changes(classes=None), GateConfig(min_above_chance=0)))


def test_thresholds():
    assert all(c["passed"] for c in check(REPORT, GateConfig(max_accuracy_drop=0.02, min_sparsity=0.9)))
    failed = [c for c in check(REPORT, GateConfig(max_accuracy_drop=0.005, min_sparsity=0.95,
                                                   max_latency_ratio=0.5)) if not c["passed"]]
    assert {c["name"] for c in failed} == {"accuracy_drop", "min_sparsity", "latency_ratio"}
    assert "0.0100" in failed[0]["message"]


def test_macs_gate_uses_the_channel_cut():
    cut = with_changes(structure={"macs_before": 1000, "macs_after": 450})
    assert [c["passed"] for c in check(cut, GateConfig(max_macs_ratio=0.5)) if c["name"] == "macs_ratio"] == [True]
    assert [c["passed"] for c in check(cut, GateConfig(max_macs_ratio=0.4)) if c["name"] == "macs_ratio"] == [False]
    assert [c["passed"] for c in check(REPORT, GateConfig(max_macs_ratio=0.9)) if c["name"] == "macs_ratio"] == [False]


def test_reference_comparison():
    worse = with_changes(**{"sparse.accuracy": 0.95, "sparsity.global": 0.85})
    names = {c["name"] for c in compare(worse, REPORT) if not c["passed"]}
    assert names == {"accuracy_vs_reference", "sparsity_vs_reference"}
    assert all(c["passed"] for c in compare(REPORT, REPORT))
    partial = copy.deepcopy(REPORT_JSON)
    del partial["sparse"]["accuracy"]
    with pytest.raises(UserError, match="missing field 'sparse.accuracy'"):
        Report.from_dict(partial)


@pytest.mark.parametrize("field,value", [("dense.accuracy", "0.9"), ("sparsity.global", None),
                                         ("latency.ratio", [1]), ("sparse.samples", True)])
def test_a_report_with_a_wrongly_typed_field_is_named(field, value):
    with pytest.raises(UserError, match=f"field '{field}': expected a finite number"):
        with_changes(**{field: value})


def test_report_round_trips_through_json():
    assert Report.from_dict(json.loads(json.dumps(REPORT.to_dict()))) == REPORT
    assert REPORT.to_dict()["sparsity"]["global"] == 0.91


def test_junit_is_valid_xml():
    root = ET.fromstring(junit_xml(check(REPORT, GateConfig(max_accuracy_drop=0.0))))
    assert root.get("tests") == "3" and root.get("failures") == "1"
    assert len(root.findall("testcase/failure")) == 1


def test_cli_exit_codes(tmp_path, capsys):
    report, ref = tmp_path / "r.json", tmp_path / "ref.json"
    report.write_text(json.dumps(REPORT_JSON))
    ref.write_text(json.dumps(with_changes(**{"sparse.accuracy": 0.99}).to_dict()))
    assert main(["gate", str(report)]) == 0
    assert main(["gate", str(report), "--min-sparsity", "0.95"]) == 1
    assert main(["gate", str(report), "--reference", str(ref), "--junit", str(tmp_path / "j.xml")]) == 1
    assert ET.parse(tmp_path / "j.xml").getroot().get("failures") == "1"
    assert main(["gate", str(report), "--reference", str(ref), "--max-accuracy-drop", "0.03"]) == 0
    assert main(["gate", str(tmp_path / "missing.json")]) == 2
    assert main(["gate", str(report), "--max-accuracy-drop", "-1"]) == 2
    err = capsys.readouterr().err
    assert "missing.json: cannot read report JSON" in err and "max_accuracy_drop" in err


@pytest.mark.parametrize("field,value,words", [
    ("sparse.accuracy", 2.0, "'sparse.accuracy': 2.0 is outside [0, 1]"),
    ("sparse.accuracy", -1.0, "'sparse.accuracy': -1.0 is outside [0, 1]"),
    ("dense.agreement_with_torch", 1.5, "outside [0, 1]"),
    ("sparse.max_abs_diff_vs_torch", -0.1, "is negative"),
    ("sparsity.global", 1.2, "'sparsity.global': 1.2 is outside [0, 1]"),
    ("latency.ratio", -1, "'latency.ratio': -1 is not positive"),
    ("classes", 1, "'classes': expected an integer >= 2"),
])
def test_impossible_values_are_bad_input_not_a_regression(tmp_path, capsys, field, value, words):
    report = tmp_path / "r.json"
    report.write_text(json.dumps(_changed(field, value)))
    assert main(["gate", str(report)]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1


def _changed(dotted: str, value) -> dict:
    d = copy.deepcopy(REPORT_JSON)
    *keys, last = dotted.split(".")
    node = d
    for k in keys:
        node = node[k]
    node[last] = value
    return d


def test_a_model_at_chance_fails_the_default_gate(tmp_path, capsys):
    report = tmp_path / "r.json"
    at_chance = _changed("classes", 10)
    at_chance["dense"], at_chance["sparse"] = scores(0.11), scores(0.11)  # a state_dict of zeros, say
    report.write_text(json.dumps(at_chance))
    assert main(["gate", str(report)]) == 1
    assert "FAIL  above_chance: sparse accuracy 0.1100 vs chance 0.1000 + 0.0500" in capsys.readouterr().out
    assert main(["gate", str(report), "--min-above-chance", "0"]) == 0  # the user can say otherwise
    report.write_text(json.dumps({**at_chance, "sparse": scores(0.9), "dense": scores(0.9)}))
    assert main(["gate", str(report)]) == 0


def test_standalone_gate_uses_the_thresholds_recorded_in_the_report(tmp_path, capsys):
    report = tmp_path / "r.json"
    recorded = {**REPORT_JSON, "gate": {"passed": True, "failures": [], "checks": [],
                                        "thresholds": {"max_accuracy_drop": 0.02, "min_sparsity": 0.95}}}
    report.write_text(json.dumps(recorded))
    assert main(["gate", str(report)]) == 1  # the report's own 0.95, not the flag default 0
    out = capsys.readouterr().out
    assert "min_sparsity 0.95 (report)" in out and "FAIL  min_sparsity" in out
    assert main(["gate", str(report), "--min-sparsity", "0.9"]) == 0
    assert "min_sparsity 0.9 (flag)" in capsys.readouterr().out
    recorded["gate"]["thresholds"]["max_accuracy_drop"] = 7
    report.write_text(json.dumps(recorded))
    assert main(["gate", str(report)]) == 2
    assert "gate.thresholds" in capsys.readouterr().err


# threshold -> (the report field it reads, the value at the limit, a value just past it, the GateConfig field and
# limit); dense accuracy is 0.98, so a sparse accuracy of 0.95 is a drop of 0.03
LIMITS = {
    "accuracy_drop": ("sparse.accuracy", 0.95, 0.9499, "max_accuracy_drop", 0.03),
    "min_sparsity": ("sparsity.global", 0.9, 0.8999, "min_sparsity", 0.9),
    "min_accuracy": ("sparse.accuracy", 0.96, 0.9599, "min_accuracy", 0.96),
    "latency_ratio": ("latency.ratio", 0.7, 0.7001, "max_latency_ratio", 0.7),
    "macs_ratio": ("structure.macs_after", 600, 601, "max_macs_ratio", 0.6),
}


@pytest.mark.parametrize("name", list(LIMITS))
def test_each_threshold_passes_at_its_limit_and_fails_just_past_it(name):
    field, at, past, option, limit = LIMITS[name]
    gate = GateConfig(**{"max_accuracy_drop": 1.0, option: limit})
    for value, passes in ((at, True), (past, False)):
        changes = {field: value} if name != "macs_ratio" else {"structure": {"macs_before": 1000, "macs_after": value}}
        results = {c["name"]: c["passed"] for c in check(with_changes(**changes), gate)}
        assert results[name] is passes, (name, value)
        assert all(results[n] for n in results if n != name)  # only the threshold under test decides


@pytest.mark.parametrize("name,field,at,past,option", [
    ("accuracy_vs_reference", "sparse.accuracy", 0.95, 0.9499, {"max_accuracy_drop": 0.02}),
    ("sparsity_vs_reference", "sparsity.global", 0.89, 0.8899, {"max_sparsity_drop": 0.02}),
    ("latency_ratio_vs_reference", "latency.ratio", 0.9, 0.9001, {"max_latency_ratio_increase": 0.1}),
])
def test_each_reference_check_passes_at_its_limit_and_fails_just_past_it(name, field, at, past, option):
    for value, passes in ((at, True), (past, False)):
        results = {c["name"]: c["passed"] for c in compare(with_changes(**{field: value}), REPORT, **option)}
        assert results[name] is passes, (name, value)
        assert all(results[n] for n in results if n != name)


@pytest.mark.parametrize("name,field,option", [("min_sparsity", "sparsity.global", "min_sparsity"),
                                               ("min_accuracy", "sparse.accuracy", "min_accuracy")])
def test_a_floor_absorbs_float_rounding_only(name, field, option):
    """A value 1e-12 under the floor (float rounding of the same number) passes; 1e-9 under fails."""
    gate = GateConfig(max_accuracy_drop=1.0, **{option: 0.9})
    passed = {under: {c["name"]: c["passed"] for c in check(with_changes(**{field: 0.9 - under}), gate)}[name]
              for under in (1e-12, 1e-9)}
    assert passed == {1e-12: True, 1e-9: False}


def test_every_value_under_a_latency_ceiling_passes():
    for ratio, passes in ((0.2, True), (float("0.7"), True), (0.7000001, False), (3.0, False)):
        results = {c["name"]: c["passed"] for c in check(with_changes(**{"latency.ratio": ratio}),
                                                          GateConfig(max_latency_ratio=float("0.7")))}
        assert results["latency_ratio"] is passes, ratio
    ref = with_changes(**{"latency.ratio": 0.5})
    for ratio, passes in ((0.3, True), (0.55, True), (0.65, False)):
        results = {c["name"]: c["passed"] for c in compare(with_changes(**{"latency.ratio": ratio}), ref,
                                                            max_latency_ratio_increase=0.1)}
        assert results["latency_ratio_vs_reference"] is passes, ratio


def test_reports_of_different_setups_are_compared_only_when_allowed():
    other = with_changes(model="resnet20", data="mnist", **{"sparse.samples": 150})
    with pytest.raises(UserError, match=r"not comparable with reference \(model 'resnet20' vs 'mlp'; data") as e:
        compare(other, REPORT)
    assert "test samples" not in str(e.value)  # the first two differences are named
    assert {c["name"] for c in compare(other, REPORT, allow_different=True)} == {"accuracy_vs_reference",
                                                                               "sparsity_vs_reference"}
    with pytest.raises(TypeError):
        compare(REPORT, REPORT, 0.5)  # thresholds are named, never positional


def test_a_value_at_the_limit_up_to_float_rounding_passes_and_large_misses_fail():
    """Limits are inclusive, with 1e-12 for float rounding (the values below make that exact), and a
    large miss fails (the difference is a difference, whatever the numbers)."""
    at_limit = with_changes(**{"dense.accuracy": 1.0, "sparse.accuracy": 0.5,
                               "structure": {"macs_before": 1000, "macs_after": 500}})
    gate = GateConfig(max_accuracy_drop=0.5 - 1e-12, max_macs_ratio=0.5 - 1e-12)
    assert all(c["passed"] for c in check(at_limit, gate))
    big_drop = with_changes(**{"dense.accuracy": 0.9, "sparse.accuracy": 0.3})
    assert [c["passed"] for c in check(big_drop, GateConfig(max_accuracy_drop=0.5)) if c["name"] == "accuracy_drop"] \
        == [False]
    reference = with_changes(**{"sparse.accuracy": 1.0, "sparsity.global": 0.75, "latency.ratio": 0.5})
    same = with_changes(**{"sparse.accuracy": 0.5, "sparsity.global": 0.5, "latency.ratio": 0.75})
    assert all(c["passed"] for c in compare(same, reference, max_accuracy_drop=0.5 - 1e-12,
                                            max_sparsity_drop=0.25 - 1e-12, max_latency_ratio_increase=0.25))
    worse = with_changes(**{"sparse.accuracy": 0.3, "sparsity.global": 0.3})
    far = with_changes(**{"sparse.accuracy": 0.97, "sparsity.global": 0.91})
    assert not any(c["passed"] for c in compare(worse, far, max_accuracy_drop=0.5, max_sparsity_drop=0.5))
