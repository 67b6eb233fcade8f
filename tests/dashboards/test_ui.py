"""The pages' shared presentation helpers."""

from __future__ import annotations

import csv
import io

import polars as pl

from dashboards.ui import csv_text


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
