"""The architecture holds: no import cycles, layers point one way, no function-level imports of our own modules
(they hid cycles before). Read with ``ast`` from the source, so it is cheap and imports nothing."""

from __future__ import annotations

from pathlib import Path

from .import_graph import violations

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "clipbackdoor"
# cli.py imports each command's modules when that command runs: `clipbackdoor plan` need not load torch's trainer.
EXEMPT = ("clipbackdoor.cli",)
# (importer, imported) -> why it must be imported inside a function. Only to defer a heavy optional dependency.
ALLOWED_FUNCTION_LEVEL: dict[tuple[str, str], str] = {}


def test_the_package_has_no_cycle_no_upward_import_and_no_hidden_import() -> None:
    assert violations(PACKAGE, ALLOWED_FUNCTION_LEVEL, EXEMPT) == []


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_the_check_finds_a_planted_cycle_an_upward_import_and_a_hidden_import(tmp_path: Path) -> None:
    package = _write(
        tmp_path,
        {
            "__init__.py": "",
            "data/__init__.py": "from pkg.data.rows import Row\n",
            "data/rows.py": "from pkg.data.cache import keep\nclass Row: ...\n",
            "data/cache.py": "from pkg.data import rows\ndef keep(): ...\n",  # rows -> cache -> rows
            "models.py": "def build():\n    from pkg.train.loop import fit\n",  # upward, and inside a function
            "train/__init__.py": "",
            "train/loop.py": "from pkg.models import build\ndef fit(): ...\n",
            "cli.py": "def main():\n    from pkg.train.loop import fit\n",  # exempt
        },
    )
    found = violations(package, {}, ("pkg.cli",))
    assert "import cycle: pkg.data.cache <-> pkg.data.rows" in found
    assert "pkg.models:2 imports pkg.train.loop: models may not import train" in found
    assert "pkg.models:2 imports pkg.train.loop inside a function (not on the allowlist)" in found
    assert "import cycle: pkg.models <-> pkg.train.loop" in found
    assert len(found) == 4, found
    allowed = violations(package, {("pkg.models", "pkg.train.loop"): "a test"}, ("pkg.cli",))
    assert sorted(allowed) == sorted(
        set(found) - {"pkg.models:2 imports pkg.train.loop inside a function (not on the allowlist)"}
    )
