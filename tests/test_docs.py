"""The README and the reference pages in docs/: every relative link and anchor resolves, the README
stays short, and its first commands are the two that matter."""
import re
from pathlib import Path

import pytest

from conftest import REPO

README_MAX_LINES = 300
FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.S | re.M)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)


def pages() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def prose(text: str) -> str:
    """The text without fenced code blocks and code spans (links inside code are not links)."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the text without markup, lower case, punctuation other than
    '-' and '_' dropped, spaces as '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)   # [text](url) -> text
    text = text.replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor of a Markdown file's headings (outside code blocks); repeats get -1, -2, ..."""
    seen: dict[str, int] = {}
    out = set()
    for _, title in HEADING.findall(FENCE.sub("", path.read_text())):
        base = slug(title)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(path: Path) -> list[str]:
    """Relative links (and images) in `path` whose file or anchor does not exist."""
    bad = []
    for target in LINK.findall(prose(path.read_text())):
        if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):   # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            bad.append(f"{path.name}: {target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{path.name}: {target} (no heading with that anchor in {dest.name})")
        elif anchor and dest.suffix != ".md":
            bad.append(f"{path.name}: {target} (an anchor into a file that is not Markdown)")
    return bad


@pytest.mark.parametrize("path", pages(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_resolves(path):
    assert broken_links(path) == []


def test_link_check_catches_a_broken_file_and_anchor(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## A section (`x.py`)\n\n## A section (`x.py`)\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md#a-section-xpy) [ok too](other.md#a-section-xpy-1) [self](#title)\n"
                    "# Title\n[gone](missing.md) [no anchor](other.md#nope) ![img](img/none.png)\n"
                    "`[in code](missing.md)`\n```\n[in a block](missing.md)\n```\n")
    assert broken_links(page) == [
        "page.md: missing.md (no such file)",
        "page.md: other.md#nope (no heading with that anchor in other.md)",
        "page.md: img/none.png (no such file)",
    ]


def test_readme_is_short():
    lines = (REPO / "README.md").read_text().count("\n")
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines (at most {README_MAX_LINES}): move detail into a page under docs/")


def test_readme_starts_with_the_two_commands():
    """The first commands in the README are the main job and the test suite, in that order."""
    first_block = FENCE.search((REPO / "README.md").read_text()).group(0)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()[1:-1]]
    assert [c for c in commands if c] == ["tools/quickstart.sh", "tools/test.sh"]
