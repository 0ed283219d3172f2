"""Rewrite the configuration reference page, docs/config-reference.md, from the config classes
(run after changing a field; tests/test_config.py checks the page against the code).

    .venv/bin/python tools/readme_reference.py
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deploy.config import config_reference  # noqa: E402

PAGE = Path(__file__).resolve().parents[1] / "docs" / "config-reference.md"
HEADER = "| field | type | default | meaning |"


def reference_table(text: str) -> tuple[int, int]:
    """Start and end offsets of the page's reference table: from its header row through the last
    row of the table (the lines that follow it and start with '|')."""
    start = text.index(HEADER)
    end = start
    for line in text[start:].splitlines(keepends=True):
        if not line.startswith("|"):
            break
        end += len(line)
    return start, end


def main() -> int:
    text = PAGE.read_text()
    start, end = reference_table(text)
    PAGE.write_text(text[:start] + config_reference() + text[end:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
