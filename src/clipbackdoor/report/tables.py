"""A table written once and rendered to Markdown and to HTML, so both reports show the same cells."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any


def format_value(value: Any) -> str:
    """A hyperparameter as people write it: ``0.0003``, ``4``, ``adamw`` (floats to 3 significant digits)."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]

    def markdown(self) -> str:
        def line(cells: list[str]) -> str:
            return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

        return "\n".join([line(self.headers), line(["---"] * len(self.headers)), *map(line, self.rows)])

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.headers)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in self.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
