"""The charts' own shaping of what the marts return."""

from __future__ import annotations

from datetime import UTC, date, datetime

import polars as pl

from dashboards.charts import daily_sends, daily_trend, list_growth, sent_and_forecast, step_exits
from dashboards.ui import RATE_FORMAT

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


def _x(chart) -> dict:
    """The x encoding of a chart's first layer, as Vega-Lite receives it."""
    spec = chart.to_dict()
    layer = spec["layer"][0] if "layer" in spec else spec
    return layer["encoding"]["x"]


def test_a_forecast_of_a_single_day_reads_as_one_labelled_day():
    # a campaign that sent everything today: one day sent, nothing ahead
    day = datetime.now(UTC).date()
    sent = pl.DataFrame({"day": [day], "sent": [40]})
    ahead = pl.DataFrame(schema={"day": pl.Date, "step": pl.String, "messages": pl.Int64})
    x = _x(sent_and_forecast(sent, ahead))
    # ticks at midnights only, and the one midnight in the domain is the day's own
    assert x["axis"]["tickCount"] == {"interval": "day", "step": 1}
    assert x["axis"]["format"] == "%b %d"
    start, end = x["scale"]["domain"]
    assert (start["year"], start["month"], start["date"]) == (day.year, day.month, day.day)
    assert start.get("hours", 0) == 0
    assert (end["year"], end["month"], end["date"], end["hours"]) == (
        day.year,
        day.month,
        day.day,
        23,
    )


def test_a_long_period_labels_every_few_days_at_midnight():
    x = _x(
        daily_sends(pl.DataFrame({"day": [START], "campaign_name": ["a"], "sent": [1]}), START, END)
    )
    first, last = x["scale"]["domain"]
    assert (first["month"], first["date"], last["month"], last["date"]) == (11, 3, 12, 2)
    assert x["axis"]["tickCount"] == {"interval": "day", "step": 3}  # 30 days, about 10 labels


def test_the_exits_axis_counts_in_whole_numbers_and_gives_labels_room():
    exits = pl.DataFrame(
        {
            "step_key": ["a-rather-long-step-key-for-the-second-follow-up", "intro"],
            "step_order": [2, 1],
            "exit_reason": ["replied", "bounced"],
            "exited": [1, 1],
        }
    )
    encoding = step_exits(exits).to_dict()["encoding"]
    assert encoding["x"]["axis"]["tickMinStep"] == 1
    assert encoding["x"]["axis"]["format"] == ",d"
    assert encoding["y"]["axis"]["labelLimit"] >= 300


def test_every_count_axis_has_whole_ticks_and_every_rate_tooltip_the_tables_decimals():
    frame = pl.DataFrame({"day": [START], "sent": [3], "delivered": [3], "open_rate": [0.3456]})
    spec = daily_trend(frame, START, END, ["open_rate"]).to_dict()
    bars, lines = spec["layer"]
    assert bars["encoding"]["y"]["axis"]["tickMinStep"] == 1
    [rate] = [t for t in lines["encoding"]["tooltip"] if t["field"] == "rate"]
    assert rate["format"] == RATE_FORMAT == ".2~%"  # "3.46%", "0.9%", as in the tables
