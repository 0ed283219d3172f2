import copy
import json
import xml.etree.ElementTree as ET

import pytest

from compress.errors import UserError
from deploy.cli import main
from deploy.gate import GateConfig, check, compare
from deploy.report import junit_xml

REPORT = {"dense": {"accuracy": 0.98}, "sparse": {"accuracy": 0.97}, "sparsity": {"global": 0.91},
          "latency": {"ratio": 0.8}}


def test_thresholds():
    assert all(c["passed"] for c in check(REPORT, GateConfig(max_accuracy_drop=0.02, min_sparsity=0.9)))
    failed = [c for c in check(REPORT, GateConfig(max_accuracy_drop=0.005, min_sparsity=0.95,
                                                   max_latency_ratio=0.5)) if not c["passed"]]
    assert {c["name"] for c in failed} == {"accuracy_drop", "min_sparsity", "latency_ratio"}
    assert "0.0100" in failed[0]["message"]


def test_macs_gate_uses_the_channel_cut():
    cut = {**REPORT, "structure": {"macs_before": 1000, "macs_after": 450}}
    assert [c["passed"] for c in check(cut, GateConfig(max_macs_ratio=0.5)) if c["name"] == "macs_ratio"] == [True]
    assert [c["passed"] for c in check(cut, GateConfig(max_macs_ratio=0.4)) if c["name"] == "macs_ratio"] == [False]
    assert [c["passed"] for c in check(REPORT, GateConfig(max_macs_ratio=0.9)) if c["name"] == "macs_ratio"] == [False]


def test_reference_comparison():
    worse = copy.deepcopy(REPORT)
    worse["sparse"]["accuracy"] = 0.95
    worse["sparsity"]["global"] = 0.85
    names = {c["name"] for c in compare(worse, REPORT) if not c["passed"]}
    assert names == {"accuracy_vs_reference", "sparsity_vs_reference"}
    assert all(c["passed"] for c in compare(REPORT, REPORT))
    with pytest.raises(UserError, match="missing field 'sparse.accuracy'"):
        compare({"sparsity": {"global": 1}}, REPORT)


def test_junit_is_valid_xml():
    root = ET.fromstring(junit_xml(check(REPORT, GateConfig(max_accuracy_drop=0.0))))
    assert root.get("tests") == "2" and root.get("failures") == "1"
    assert len(root.findall("testcase/failure")) == 1


def test_cli_exit_codes(tmp_path, capsys):
    report, ref = tmp_path / "r.json", tmp_path / "ref.json"
    report.write_text(json.dumps(REPORT))
    better = copy.deepcopy(REPORT)
    better["sparse"]["accuracy"] = 0.99
    ref.write_text(json.dumps(better))
    assert main(["gate", str(report)]) == 0
    assert main(["gate", str(report), "--min-sparsity", "0.95"]) == 1
    assert main(["gate", str(report), "--reference", str(ref), "--junit", str(tmp_path / "j.xml")]) == 1
    assert ET.parse(tmp_path / "j.xml").getroot().get("failures") == "1"
    assert main(["gate", str(report), "--reference", str(ref), "--max-accuracy-drop", "0.03"]) == 0
    assert main(["gate", str(tmp_path / "missing.json")]) == 2
    assert main(["gate", str(report), "--max-accuracy-drop", "-1"]) == 2
    err = capsys.readouterr().err
    assert "missing.json: cannot read report JSON" in err and "max_accuracy_drop" in err
