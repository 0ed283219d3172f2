"""The results tables agree with their committed JSON (tools/tables.py), and the check catches a change."""
import importlib.util
import json
import sys

from conftest import REPO


def load_tables():
    spec = importlib.util.spec_from_file_location("tables", REPO / "tools" / "tables.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["tables"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_every_table_matches_its_json():
    tables = load_tables()
    pages = "\n\n".join(page.read_text() for page in tables.pages())  # README.md and docs/*.md
    doc = (REPO / "docs" / "tables.md").read_text()
    assert tables.differences(pages, doc) == []
    assert all((REPO / s).exists() for t in tables.TABLES for s in t.sources)
    assert all(t.command in doc for t in tables.TABLES)  # each table printed beside the command that measures it


def test_a_number_off_its_json_is_caught(tmp_path):
    """A hand-made source: GReg-1 99.05% / L1 98.96% at 2x, 0.480 of the MACs, 28.1% cut. The rendered row
    is checked digit by digit; a README copy with one number changed (98.96 → 98.97) fails, a copy that
    only drops the bold passes."""
    tables = load_tables()
    src = {"rows": [{"factor": 2.0, "ratio": 0.28125, "method": "L1 one-shot", "accuracy": 0.9905,
                     "macs_ratio": 0.48011},
                    {"factor": 2.0, "ratio": 0.28125, "method": "GReg-1", "accuracy": 0.9896, "macs_ratio": 0.48011}]}
    (tmp_path / "r.json").write_text(json.dumps(src))
    table = tables.Table("t", [str(tmp_path / "r.json")], "cmd", tables.greg_filters)
    lines = tables.rendered(table)
    assert lines[2] == "| 2x | 28.1% | 0.480 | **99.05%** | 98.96% |"
    tables.TABLES = [table]
    doc = tables.document()
    readme = "text\n\n" + "\n".join(lines) + "\n\nmore\n"
    assert tables.differences(readme, doc) == []
    assert tables.differences(readme.replace("**99.05%**", "99.05%"), doc) == []
    assert tables.differences(readme.replace("98.96%", "98.97%"), doc) == ["table 't' differs from " +
                                                                           str(tmp_path / "r.json")]
    assert tables.differences(readme, doc.replace("98.96%", "98.97%"))[0].startswith("docs/tables.md is not")
    wider = readme.replace("| 98.96% |", "| 98.96% | 1.0 |")  # a column the JSON does not give
    assert len(tables.differences(wider, doc)) == 1
    assert "is in no page" in tables.differences("no table here", doc)[0]  # a table that went missing
