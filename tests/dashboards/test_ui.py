"""The pages' shared presentation helpers."""

from __future__ import annotations

import ast
import csv
import io
from pathlib import Path

import polars as pl

from dashboards.ui import csv_text
from engine.config import PROJECT_ROOT


def test_every_download_is_formula_safe_with_its_lists_joined():
    frame = pl.DataFrame(
        {"step_name": ["=HYPERLINK(1)", "intro"], "lists": [["a", "b"], []], "sent": [3, -4]}
    )
    rows = list(csv.reader(io.StringIO(csv_text(frame))))
    assert rows == [
        ["step_name", "lists", "sent"],
        ["'=HYPERLINK(1)", "a; b", "3"],
        ["intro", "", "-4"],
    ]


def _download_calls(path: Path) -> list[str]:
    """The function (innermost; "<module>" for a page's top level) of every
    `download_button` call in `path`."""
    calls = []

    def visit(node: ast.AST, function: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                visit(child, getattr(child, "name", function))
                continue
            if isinstance(child, ast.Call) and getattr(child.func, "attr", None) == (
                "download_button"
            ):
                calls.append(f"{path.name}:{function}:{child.lineno}")
            visit(child, function)

    visit(ast.parse(path.read_text(encoding="utf-8")), "<module>")
    return calls


def test_no_page_offers_a_download_but_through_the_formula_safe_path():
    dashboards = PROJECT_ROOT / "dashboards"
    calls = [call for path in sorted(dashboards.rglob("*.py")) for call in _download_calls(path)]
    # ui.download writes every CSV with csv_text (test above); a page's own call would not
    assert [call.rsplit(":", 1)[0] for call in calls] == ["ui.py:download"], calls
