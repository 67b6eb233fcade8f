"""Charts for the dashboards (Altair)."""

from __future__ import annotations

from datetime import date, timedelta

import altair as alt
import polars as pl


def daily_sends(frame: pl.DataFrame, start: date, end: date) -> alt.Chart:
    """Messages sent per day over the whole chosen range, stacked by campaign."""
    domain = [start.isoformat(), (end + timedelta(days=1)).isoformat()]
    return (
        alt.Chart(frame.to_pandas())
        .mark_bar()
        .encode(
            x=alt.X(
                "yearmonthdate(day):T",
                title="Send day",
                scale=alt.Scale(domain=domain),
                axis=alt.Axis(format="%b %d", labelAngle=0),
            ),
            y=alt.Y("sum(sent):Q", title="Sent"),
            color=alt.Color("campaign_name:N", title="Campaign"),
            tooltip=["day:T", "campaign_name:N", "sent:Q", "delivered:Q", "unique_opens:Q"],
        )
        .properties(height=320)
    )


#: The rates a trend can show, with their labels.
RATES = {
    "delivery_rate": "Delivery rate",
    "open_rate": "Open rate",
    "click_rate": "Click rate",
    "reply_rate": "Reply rate",
    "bounce_rate": "Bounce rate",
    "unsubscribe_rate": "Unsubscribe rate",
    "complaint_rate": "Complaint rate",
    "machine_open_share": "Machine-open share",
}


def daily_trend(frame: pl.DataFrame, start: date, end: date, rates: list[str]) -> alt.Chart:
    """Messages sent per day (bars, left axis) under the chosen rates per day (lines, right)."""
    domain = [start.isoformat(), (end + timedelta(days=1)).isoformat()]
    x = alt.X(
        "yearmonthdate(day):T",
        title="Send day",
        scale=alt.Scale(domain=domain),
        axis=alt.Axis(format="%b %d", labelAngle=0),
    )
    source = frame.to_pandas()
    bars = (
        alt.Chart(source)
        .mark_bar(opacity=0.35)
        .encode(
            x=x,
            y=alt.Y("sent:Q", title="Sent", axis=alt.Axis(format=",d")),
            tooltip=[
                alt.Tooltip("day:T", title="Day", format="%Y-%m-%d"),
                alt.Tooltip("sent:Q", title="Sent", format=","),
                alt.Tooltip("delivered:Q", title="Delivered", format=","),
            ],
        )
    )
    long = (
        frame.select("day", *rates)
        .unpivot(index="day", variable_name="metric", value_name="rate")
        .with_columns(pl.col("metric").replace_strict(RATES).alias("label"))
    )
    lines = (
        alt.Chart(long.to_pandas())
        .mark_line(point=True)
        .encode(
            x=x,
            y=alt.Y("rate:Q", title="Rate", axis=alt.Axis(format="%")),
            color=alt.Color("label:N", title=None),
            tooltip=[
                alt.Tooltip("day:T", title="Day", format="%Y-%m-%d"),
                alt.Tooltip("label:N", title="Metric"),
                alt.Tooltip("rate:Q", title="Rate", format=".1%"),
            ],
        )
    )
    return alt.layer(bars, lines).resolve_scale(y="independent").properties(height=340)
