"""The README's result tables say what the committed reports (made by the tool) say."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _table_rows(text: str) -> dict[str, list[str]]:
    """First Markdown table in ``text``: its body rows by first cell."""
    lines = [line for line in text[text.index("\n|") :].strip().splitlines()]
    rows = {}
    for line in lines:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        if not set(cells[0]) <= {"-", " "}:
            rows[cells[0]] = cells[1:]
    return rows


def test_readme_demo_table_is_the_committed_demo_report_s() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### The demo: the reduced study") :]
    report = (ROOT / "docs" / "results" / "demo" / "report.md").read_text()
    best = report[report.index("## Best cleaned models") :]
    shown, made = _table_rows(section), _table_rows(best)
    assert set(made) - {"pre-training"} <= set(shown)
    for label, cells in made.items():
        if label != "pre-training":
            # the README may add to a cell ("none reached (best ASR ...)"), never change it
            assert all(s.startswith(c) for s, c in zip(shown[label], cells, strict=True)), (label, shown[label], cells)
