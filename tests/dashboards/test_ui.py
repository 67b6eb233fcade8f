"""The pages' shared presentation helpers."""

from __future__ import annotations

import ast
import csv
import io
from datetime import UTC, datetime, time
from pathlib import Path

import polars as pl

from dashboards.ui import METRIC_COLUMNS, MISSING, change, csv_text, percent, settings_table
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


def test_a_rate_reads_in_a_tile_as_in_a_table():
    # as Streamlit's "percent" column format writes them: two decimals, trailing zeros dropped
    assert [percent(r) for r in (0.03456, 0.009, 1.0, 0.0)] == ["3.46%", "0.9%", "100%", "0%"]
    assert percent(None) == MISSING == "—"
    assert change("open_rate", {"open_rate": 0.05}, {"open_rate": 0.0345}) == "+1.55 pp"
    assert all(
        column["type_config"]["format"] == "percent"
        for name, column in METRIC_COLUMNS.items()
        if name.endswith(("_rate", "_share"))
    )


def test_campaign_settings_read_as_labels_and_full_times_in_the_campaigns_zone():
    settings = {
        "campaign_name": "Q4 outreach",
        "campaign_status": "completed",
        "campaign_timezone": "Europe/Berlin",
        "created_at": datetime(2026, 12, 1, 8, 5, 9, tzinfo=UTC),
        "launched_at": datetime(2026, 12, 1, 23, 30, 0, tzinfo=UTC),  # the 2nd in Berlin
        "completed_at": None,
        "send_window_start": time(9, 0),
        "send_window_end": time(17, 30),
        "send_days": [1, 2, 3, 4, 5],
        "daily_limit": 1500,
        "stop_on_reply": "company",
        "track_opens": True,
        "track_clicks": False,
        "steps": 3,
        "email_steps": 2,
    }
    rows = dict(settings_table(settings).iter_rows())
    assert rows == {
        "Name": "Q4 outreach",
        "Status": "completed",
        "Time zone": "Europe/Berlin",
        "Created": "2026-12-01 09:05:09 Europe/Berlin",
        "Launched": "2026-12-02 00:30:00 Europe/Berlin",
        "Completed": "—",
        "Send window opens": "09:00 Europe/Berlin",
        "Send window closes": "17:30 Europe/Berlin",
        "Send days": "Mon, Tue, Wed, Thu, Fri",
        "Daily limit": "1,500",
        "Stop on reply": "every enrollment of the contact's company stops",
        "Track opens": "yes",
        "Track clicks": "no",
        "Steps": "3",
        "Email steps": "2",
    }
    # a zone that names none: UTC, and said so
    unnamed = dict(settings_table({**settings, "campaign_timezone": "Mars/Olympus"}).iter_rows())
    assert unnamed["Created"] == "2026-12-01 08:05:09 UTC"
