"""The charts' own shaping of what the marts return."""

from __future__ import annotations

from datetime import date

import polars as pl

from dashboards.charts import list_growth

START, END = date(2026, 11, 3), date(2026, 12, 2)


def test_list_growth_draws_every_list_across_the_whole_period():
    added = pl.DataFrame(
        {
            "list_name": ["a", "a", "b"],
            # `b` got all its members before the period: its line is flat, not missing
            "day": [date(2026, 10, 1), date(2026, 11, 10), date(2026, 10, 5)],
            "members_added": [5, 2, 7],
        }
    )
    rows = list_growth(added, START, END).data
    lines = {
        name: list(zip(group["day"].dt.date, group["members"], strict=True))
        for name, group in rows.groupby("list_name")
    }
    assert lines == {
        "a": [(START, 5), (date(2026, 11, 10), 7), (END, 7)],
        "b": [(START, 7), (END, 7)],
    }


def test_list_growth_of_no_lists_is_an_empty_chart():
    empty = pl.DataFrame(schema={"list_name": pl.String, "day": pl.Date, "members_added": pl.Int64})
    assert list_growth(empty, START, END).data.empty
