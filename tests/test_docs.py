"""The manual's promises: its links resolve, the README stays short, the protocol table is true."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

from argent_client.protocol import METHODS

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_LINES = 250

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
_CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.S)
_LINK = re.compile(r"(?<!\\)\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.M)


def pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def strip_code(text: str) -> str:
    """The text without fenced blocks (a `](x)` inside code is not a link)."""
    return _FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to '-'."""
    text = _CODE_SPAN.sub(lambda m: m.group(2), heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link keeps its text
    text = text.strip().lower()
    out = []
    for ch in text:
        cat = unicodedata.category(ch)
        if ch in "-_ " or cat[0] in "LNM":
            out.append("-" if ch == " " else ch)
    return "".join(out)


def anchors(path: Path) -> set[str]:
    """Every anchor GitHub makes for `path`'s headings (repeats get -1, -2, ...)."""
    seen: dict[str, int] = {}
    result = set()
    for m in _HEADING.finditer(strip_code(path.read_text())):
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        result.add(base if n == 0 else f"{base}-{n}")
    return result


def links(path: Path) -> list[str]:
    text = _CODE_SPAN.sub("", strip_code(path.read_text()))
    return _LINK.findall(text)


def test_slug_matches_github_for_headings_with_code_and_punctuation() -> None:
    assert slug("The daemon config: `argentd.toml`") == "the-daemon-config-argentdtoml"
    assert slug("`argentctl lease P | --route R`") == "argentctl-lease-p----route-r"
    assert slug("`argentctl report LEASE_ID --kind K`") == "argentctl-report-lease_id---kind-k"


def test_links_finds_relative_links_outside_code_only() -> None:
    sample = DOCS / "index.md"
    assert "configuration.md" in links(sample)
    assert strip_code("a\n```\n[x](nowhere.md)\n```\nb") == "a\n\nb"


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
            continue
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with anchor #{anchor}")
    assert not broken, f"{page.name}: broken links: {broken}"


def test_docs_readme_is_short() -> None:
    n = len(README.read_text().splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines; move detail into docs/"


def test_docs_index_links_to_every_docs_page() -> None:
    linked = {Path(t.partition("#")[0]).name for t in links(README) if t.startswith("docs/")}
    linked |= {Path(t.partition("#")[0]).name for t in links(DOCS / "index.md")}
    missing = sorted(p.name for p in DOCS.glob("*.md") if p.name not in linked | {"index.md"})
    assert not missing, f"add a line for {missing} to the table of contents in docs/index.md"


def test_docs_protocol_method_table_lists_exactly_the_protocol_methods() -> None:
    text = (DOCS / "protocol.md").read_text()
    section = text.split("## Methods", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    documented = [row.split("`")[1] for row in rows]
    assert len(documented) == len(set(documented)), f"a method is listed twice: {documented}"
    assert sorted(documented) == sorted(METHODS)


def test_docs_units_cite_existing_pages() -> None:
    cited = set()
    for folder in ("systemd", "launchd"):
        for unit in (ROOT / folder).rglob("*"):
            if unit.is_file():
                cited |= set(re.findall(r"docs/[a-z-]+\.md", unit.read_text()))
    assert cited, "the units cite no docs page"
    for page in sorted(cited):
        assert (ROOT / page).is_file(), f"{page} is cited by a unit but does not exist"
