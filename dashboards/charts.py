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
