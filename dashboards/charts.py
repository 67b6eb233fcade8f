"""Charts for the dashboards (Altair)."""

from __future__ import annotations

import altair as alt
import polars as pl


def daily_sends(frame: pl.DataFrame) -> alt.Chart:
    """Messages sent per day, stacked by campaign."""
    return (
        alt.Chart(frame.to_pandas())
        .mark_bar()
        .encode(
            x=alt.X("day:T", title="Day", timeUnit="yearmonthdate"),
            y=alt.Y("sum(sent_count):Q", title="Sent"),
            color=alt.Color("campaign_name:N", title="Campaign"),
            tooltip=["day:T", "campaign_name:N", "sent_count:Q", "bounced_count:Q"],
        )
        .properties(height=320)
    )
