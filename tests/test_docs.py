"""The docs hold together: every relative link and image in README.md, ARCHITECTURE.md and docs/ resolves to a
file in the repo (and an anchor to a heading of that page), and every test docs/departures.md names exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", ROOT / "ARCHITECTURE.md", *(ROOT / "docs").rglob("*.md")])

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...


def prose(text: str) -> str:
    """``text`` without fenced code blocks, and with inline code spans blanked (their brackets are not links)."""
    return CODE_SPAN.sub("code", FENCE.sub("", text))


def links(page: Path) -> list[str]:
    text = prose(page.read_text())
    return LINK.findall(text) + REFERENCE.findall(text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: inline markup dropped, lower case, punctuation but ``-`` and ``_``
    removed, each space a ``-``."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors of a Markdown page's headings (a repeated heading gets ``-1``, ``-2``, ... as on GitHub)."""
    seen: dict[str, int] = {}
    out = set()
    for heading in HEADING.findall(FENCE.sub("", page.read_text())):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken(page: Path, root: Path = ROOT) -> list[str]:
    problems = []
    for target in links(page):
        if EXTERNAL.match(target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            problems.append(f"{target}: no such file")
        elif not resolved.is_relative_to(root):
            problems.append(f"{target}: outside the repository")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{target}: no heading #{anchor} in {resolved.relative_to(root)}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_image_resolves(page: Path) -> None:
    assert not broken(page), broken(page)


def test_the_pages_are_found_and_their_links_read() -> None:
    names = {str(p.relative_to(ROOT)) for p in PAGES}
    assert {"README.md", "ARCHITECTURE.md", "docs/departures.md", "docs/results/README.md"} <= names
    readme = links(ROOT / "README.md")
    assert "docs/results/study-fmnist/figures/ca_vs_asr.png" in readme  # the headline figure, an image link
    assert "docs/departures.md" in readme


def test_the_link_reader_on_a_constructed_page(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# Title\n\n## The paper's setting: `plan`\n")
    page = tmp_path / "b.md"
    page.write_text(
        "[ok](a.md#the-papers-setting-plan) ![img](a.md) [web](https://x.org/y) [self](#here)\n"
        "`[not](a link)`\n```\n[nor](this)\n```\n## Here\n[gone](c.md) [bad](a.md#nowhere)\n[ref]: a.md\n"
    )
    assert links(page) == ["a.md#the-papers-setting-plan", "a.md", "https://x.org/y", "#here", "c.md",
                           "a.md#nowhere", "a.md"]  # fmt: skip
    assert [p.split(":")[0] for p in broken(page, tmp_path)] == ["c.md", "a.md#nowhere"]
    assert broken(page, tmp_path / "elsewhere")[0].endswith("outside the repository")
    assert slug("Pre-training on 1 % poisons") == "pre-training-on-1--poisons"


def test_every_test_departures_names_exists() -> None:
    text = (ROOT / "docs" / "departures.md").read_text()
    named = set(re.findall(r"`(test_\w+\.py)::(test_\w+)`", text))
    assert len(named) > 30
    missing = []
    for file, test in sorted(named):
        path = ROOT / "tests" / file
        if not path.exists() or not re.search(rf"^def {test}\(", path.read_text(), re.MULTILINE):
            missing.append(f"{file}::{test}")
    assert not missing, missing
