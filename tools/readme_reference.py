"""Rewrite the README's config reference from the config classes (run after changing a field).

    .venv/bin/python tools/readme_reference.py
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deploy.config import config_reference  # noqa: E402

HEADER = "| field | type | default | meaning |"
END = "## Development"


def main() -> int:
    readme = Path(__file__).resolve().parents[1] / "README.md"
    text = readme.read_text()
    start, end = text.index(HEADER), text.index(END)
    readme.write_text(text[:start] + config_reference() + "\n" + text[end:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
