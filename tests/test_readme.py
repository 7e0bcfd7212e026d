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


def _attack_rows(text: str) -> dict[tuple[str, str], list[str]]:
    """The attack table's body rows (the first table after its heading) by (attack, pre-training)."""
    rows = {}
    for line in text[text.index("\n| attack") :].strip().splitlines():
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] not in ("attack", "---"):
            rows[(cells[0], cells[1])] = cells[2:]
    return rows


def test_attacks_page_table_is_the_committed_attack_report_s() -> None:
    page = (RESULTS / "attacks.md").read_text()
    report = (RESULTS / "study-attacks" / "report.md").read_text()
    shown, made = _attack_rows(page), _attack_rows(report)
    assert made and set(made) <= set(shown)
    for key, cells in made.items():  # a page may add to a cell, never change it
        assert all(s.startswith(c) for s, c in zip(shown[key], cells, strict=True)), (key, shown[key], cells)
