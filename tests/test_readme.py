"""The result tables on the README and on docs/results/ say what the committed reports (made by the tool) say."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"


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


def _assert_shows_the_report_s_best_table(section: str, report: Path) -> None:
    text = report.read_text()
    best = text[text.index("## Best cleaned models") :]
    shown, made = _table_rows(section), _table_rows(best)
    assert set(made) - {"pre-training"} <= set(shown)
    for label, cells in made.items():
        if label != "pre-training":
            # a page may add to a cell ("none reached (best ASR ...)", "(lr 3e-3)"), never change it
            assert all(s.startswith(c) for s, c in zip(shown[label], cells, strict=True)), (label, shown[label], cells)


def test_readme_demo_table_is_the_committed_demo_report_s() -> None:
    page = (RESULTS / "demo.md").read_text()  # the README's "The demo: the reduced study", moved here
    section = page[page.index("# The demo: the reduced study") :]
    _assert_shows_the_report_s_best_table(section, RESULTS / "demo" / "report.md")


def test_small_study_tables_are_the_committed_study_report_s() -> None:
    page = (RESULTS / "small-study.md").read_text()
    section = page[page.index("Best cleaned model per pre-training objective and defense") :]
    _assert_shows_the_report_s_best_table(section, RESULTS / "study-fmnist" / "report.md")
    readme = (ROOT / "README.md").read_text()  # the headline result: the same table
    headline = readme[readme.index("## The headline result") :]
    _assert_shows_the_report_s_best_table(headline, RESULTS / "study-fmnist" / "report.md")
