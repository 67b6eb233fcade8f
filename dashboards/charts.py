"""Charts for the dashboards (Altair)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

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


def list_growth(frame: pl.DataFrame, start: date, end: date) -> alt.Chart:
    """Each list's members over the period (cumulative: those added up to each day)."""
    growth = frame.sort("day").with_columns(
        pl.col("members_added").cum_sum().over("list_name").alias("members")
    )

    # Each list's line runs the whole period: from the members it had when the period began
    # (added before it, even if none joined since) to the members it has at the end.
    def at(day: date, rows: pl.DataFrame) -> pl.DataFrame:
        return (
            rows.group_by("list_name")
            .agg(pl.col("members").last())
            .select(
                "list_name",
                pl.lit(day).alias("day"),
                pl.lit(0).cast(growth["members_added"].dtype).alias("members_added"),
                "members",
            )
        )

    shown = pl.concat(
        [
            growth.filter(pl.col("day") >= start),  # a day's own row wins over an edge's
            at(start, growth.filter(pl.col("day") < start)),
            at(end, growth),
        ],
        how="vertical_relaxed",
    ).unique(["list_name", "day"], keep="first", maintain_order=True)
    domain = [start.isoformat(), (end + timedelta(days=1)).isoformat()]
    return (
        alt.Chart(shown.sort("list_name", "day").to_pandas())
        .mark_line(point=True, interpolate="step-after")
        .encode(
            x=alt.X(
                "yearmonthdate(day):T",
                title="Day",
                scale=alt.Scale(domain=domain),
                axis=alt.Axis(format="%b %d", labelAngle=0),
            ),
            y=alt.Y("members:Q", title="Members", axis=alt.Axis(format=",d")),
            color=alt.Color("list_name:N", title="List"),
            tooltip=[
                alt.Tooltip("day:T", title="Day", format="%Y-%m-%d"),
                alt.Tooltip("list_name:N", title="List"),
                alt.Tooltip("members:Q", title="Members", format=","),
                alt.Tooltip("members_added:Q", title="Added that day", format=","),
            ],
        )
        .properties(height=300)
    )


def score_bands(frame: pl.DataFrame) -> alt.Chart:
    """How many active contacts have each band of engagement score."""
    labelled = frame.with_columns(
        pl.when(pl.col("band") == 100)
        .then(pl.lit("100"))
        .otherwise(pl.format("{}–{}", pl.col("band"), pl.col("band") + 9))
        .alias("score")
    )
    return (
        alt.Chart(labelled.to_pandas())
        .mark_bar()
        .encode(
            x=alt.X("score:N", title="Engagement score", sort=None),
            y=alt.Y("contacts:Q", title="Active contacts", axis=alt.Axis(format=",d")),
            tooltip=[
                alt.Tooltip("score:N", title="Score"),
                alt.Tooltip("contacts:Q", title="Contacts", format=","),
            ],
        )
        .properties(height=260)
    )


def sent_and_forecast(sent: pl.DataFrame, forecast: pl.DataFrame) -> alt.Chart:
    """What a campaign sent per day (`day`, `sent`) beside what it will send (`day`, `step`,
    `messages`: `operate.Outlook.per_day`), stacked by email step, with today marked."""
    series = pl.concat(
        [
            sent.select(
                pl.col("day").cast(pl.Date),
                pl.lit("sent").alias("step"),
                pl.col("sent").cast(pl.Int64).alias("messages"),
                pl.lit("Sent").alias("kind"),
            ),
            forecast.select(
                "day", "step", pl.col("messages").cast(pl.Int64), pl.lit("Forecast").alias("kind")
            ),
        ]
    ).filter(pl.col("messages") > 0)
    x = alt.X("yearmonthdate(day):T", title="Day", axis=alt.Axis(format="%b %d", labelAngle=0))
    bars = (
        alt.Chart(series.to_pandas())
        .mark_bar()
        .encode(
            x=x,
            y=alt.Y("sum(messages):Q", title="Messages", axis=alt.Axis(format=",d")),
            color=alt.Color("step:N", title="Sent / forecast by step"),
            opacity=alt.Opacity(
                "kind:N",
                scale=alt.Scale(domain=["Sent", "Forecast"], range=[1.0, 0.55]),
                legend=None,
            ),
            tooltip=[
                alt.Tooltip("day:T", title="Day", format="%Y-%m-%d"),
                alt.Tooltip("kind:N", title="What"),
                alt.Tooltip("step:N", title="Step"),
                alt.Tooltip("sum(messages):Q", title="Messages", format=","),
            ],
        )
    )
    today = pl.DataFrame({"day": [datetime.now(UTC).date()]}).to_pandas()
    rule = alt.Chart(today).mark_rule(strokeDash=[4, 4]).encode(x=x)
    return (bars + rule).properties(height=300)
