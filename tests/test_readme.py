"""The result tables on the README and on docs/results/ say what the committed reports (made by the tool) say."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"


def _table_rows(text: str, start: str = "\n|", keys: int = 1) -> dict[tuple[str, ...], list[str]]:
    """The body rows of the first Markdown table in ``text`` from ``start`` on, by their first ``keys`` cells."""
    lines = text[text.index(start) :].strip().splitlines()
    rows = {}
    for line in lines[1:]:  # the header row is not a body row
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        if not set(cells[0]) <= {"-", " "}:
            rows[tuple(cells[:keys])] = cells[keys:]
    return rows


def _assert_cells_shown(shown: dict[tuple[str, ...], list[str]], made: dict[tuple[str, ...], list[str]]) -> None:
    """Every row the report made is on the page; a page may add to a cell ("none reached (best ASR ...)",
    "(lr 3e-3)"), never change it."""
    assert made and set(made) <= set(shown)
    for key, cells in made.items():
        assert all(s.startswith(c) for s, c in zip(shown[key], cells, strict=True)), (key, shown[key], cells)


def _assert_shows_the_report_s_best_table(section: str, report: Path) -> None:
    text = report.read_text()
    _assert_cells_shown(_table_rows(section), _table_rows(text[text.index("## Best cleaned models") :]))


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


def test_attacks_page_table_is_the_committed_attack_report_s() -> None:
    page = (RESULTS / "attacks.md").read_text()
    report = (RESULTS / "study-attacks" / "report.md").read_text()
    _assert_cells_shown(_table_rows(page, "\n| attack", keys=2), _table_rows(report, "\n| attack", keys=2))
