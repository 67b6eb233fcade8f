"""Charts for the dashboards (Altair).

What must hold on every chart: a day axis has one tick per day or per few days, at midnight,
never two labels for one day (`day_axis`), however short the period; a count axis has
integer ticks only (`count_axis`); a rate reads as the tables and tiles write it
(`ui.RATE_FORMAT`); a label of a step or list has room (`LABEL_LIMIT`).
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime

import altair as alt
import polars as pl

from dashboards.ui import RATE_FORMAT

#: The width, in pixels, a category axis gives its labels before it cuts them ("…").
LABEL_LIMIT = 360
#: About this many labels on a day axis at most; longer periods label every few days.
DAY_TICKS = 12


def day_axis(start: date, end: date, title: str) -> alt.X:
    """An x axis over the days `start`..`end`: ticks at midnights only (every day, or every few
    when the period is long), each labelling the day whose bar begins there, and none for the
    day after `end`; so a single day reads as one labelled day, not as hours labelled with its
    date twice. The domain is in the viewer's local time, as Vega-Lite reads the data's dates
    (ISO strings without a zone) and the `yearmonthdate` unit."""
    days = (end - start).days + 1
    step = max(1, math.ceil(days / DAY_TICKS))
    first = alt.DateTime(year=start.year, month=start.month, date=start.day)
    last = alt.DateTime(  # the last day's final moment: its bar's end, without a tick of its own
        year=end.year, month=end.month, date=end.day, hours=23, minutes=59, seconds=59
    )
    return alt.X(
        "yearmonthdate(day):T",
        title=title,
        scale=alt.Scale(domain=[first, last]),
        axis=alt.Axis(format="%b %d", labelAngle=0, tickCount={"interval": "day", "step": step}),
    )


def count_axis(**kwargs: object) -> alt.Axis:
    """An axis of counts: whole numbers only (no "0 0 0 1 1 1" on a small scale)."""
    return alt.Axis(format=",d", tickMinStep=1, **kwargs)


def daily_sends(frame: pl.DataFrame, start: date, end: date) -> alt.Chart:
    """Messages sent per day over the whole chosen range, stacked by campaign."""
    return (
        alt.Chart(frame.to_pandas())
        .mark_bar()
        .encode(
            x=day_axis(start, end, "Send day"),
            y=alt.Y("sum(sent):Q", title="Sent", axis=count_axis()),
            color=alt.Color("campaign_name:N", title="Campaign"),
            tooltip=[
                alt.Tooltip("day:T", title="Day", format="%Y-%m-%d"),
                alt.Tooltip("campaign_name:N", title="Campaign"),
                alt.Tooltip("sent:Q", title="Sent", format=","),
                alt.Tooltip("delivered:Q", title="Delivered", format=","),
                alt.Tooltip("unique_opens:Q", title="Opened", format=","),
            ],
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
    x = day_axis(start, end, "Send day")
    source = frame.to_pandas()
    bars = (
        alt.Chart(source)
        .mark_bar(opacity=0.35)
        .encode(
            x=x,
            y=alt.Y("sent:Q", title="Sent", axis=count_axis()),
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
                alt.Tooltip("rate:Q", title="Rate", format=RATE_FORMAT),
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
    return (
        alt.Chart(shown.sort("list_name", "day").to_pandas())
        .mark_line(point=True, interpolate="step-after")
        .encode(
            x=day_axis(start, end, "Day"),
            y=alt.Y("members:Q", title="Members", axis=count_axis()),
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
            y=alt.Y("contacts:Q", title="Active contacts", axis=count_axis()),
            tooltip=[
                alt.Tooltip("score:N", title="Score"),
                alt.Tooltip("contacts:Q", title="Contacts", format=","),
            ],
        )
        .properties(height=260)
    )


def sent_and_forecast(sent: pl.DataFrame, forecast: pl.DataFrame) -> alt.Chart:
    """What a campaign sent per day (`day`, `sent`) beside what it will send (`day`, `step`,
    `messages`: `data.campaign_forecast`), stacked by email step, with today marked."""
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
    today = datetime.now(UTC).date()
    days = [today, *series["day"].to_list()]
    x = day_axis(min(days), max(days), "Day")
    bars = (
        alt.Chart(series.to_pandas())
        .mark_bar()
        .encode(
            x=x,
            y=alt.Y("sum(messages):Q", title="Messages", axis=count_axis()),
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
    marker = pl.DataFrame({"day": [today]}).to_pandas()
    rule = alt.Chart(marker).mark_rule(strokeDash=[4, 4]).encode(x=x)
    return (bars + rule).properties(height=300)


def _step_label(frame: pl.DataFrame) -> pl.DataFrame:
    """`label`: "<order>. <key> (<type>)", which sorts the steps in their order."""
    return frame.with_columns(
        pl.format("{}. {} ({})", pl.col("step_order").fill_null(0), "step_key", "step_type").alias(
            "label"
        )
    )


def step_funnel(funnel: pl.DataFrame) -> alt.Chart:
    """The enrollments that reached each step (bars, in step order), labelled with their share
    of the enrolled; the tooltip gives the step's own conversion and exits. `funnel`:
    `data.step_funnel` rows with their `of_enrolled` and `went_on` (the page's table)."""
    frame = _step_label(funnel)
    order = frame["label"].to_list()
    base = alt.Chart(frame.to_pandas()).encode(
        y=alt.Y("label:N", title=None, sort=order, axis=alt.Axis(labelLimit=LABEL_LIMIT)),
        x=alt.X("reached:Q", title="Enrollments that reached the step", axis=count_axis()),
    )
    bars = base.mark_bar().encode(
        color=alt.Color("step_type:N", title="Step type"),
        tooltip=[
            alt.Tooltip("label:N", title="Step"),
            alt.Tooltip("reached:Q", title="Reached", format=","),
            alt.Tooltip("of_enrolled:Q", title="Of the enrolled", format=RATE_FORMAT),
            alt.Tooltip("went_on:Q", title="Went on", format=RATE_FORMAT),
            alt.Tooltip("exited:Q", title="Exited here", format=","),
            alt.Tooltip("standing:Q", title="Still here", format=","),
            alt.Tooltip("sent:Q", title="Sent", format=","),
        ],
    )
    text = base.mark_text(align="left", dx=4).encode(
        text=alt.Text("of_enrolled:Q", format=RATE_FORMAT)
    )
    return (bars + text).properties(height=max(160, 36 * frame.height))


def condition_split(funnel: pl.DataFrame) -> alt.Chart:
    """Each condition step's enrollments by the branch they took (yes / no), side by side."""
    conditions = _step_label(funnel.filter(pl.col("step_type") == "condition"))
    long = pl.concat(
        [
            conditions.select(
                "label",
                pl.format("yes → {}", pl.col("yes_step_key").fill_null("end")).alias("branch"),
                pl.col("took_yes").alias("enrollments"),
                pl.lit("yes").alias("answer"),
            ),
            conditions.select(
                "label",
                pl.format("no → {}", pl.col("no_step_key").fill_null("end")).alias("branch"),
                pl.col("took_no").alias("enrollments"),
                pl.lit("no").alias("answer"),
            ),
        ]
    ).with_columns(
        (pl.col("enrollments") / pl.col("enrollments").sum().over("label").replace(0, None)).alias(
            "share"
        )
    )
    return (
        alt.Chart(long.to_pandas())
        .mark_bar()
        .encode(
            y=alt.Y("label:N", title=None, axis=alt.Axis(labelLimit=LABEL_LIMIT)),
            x=alt.X("enrollments:Q", stack="normalize", title="Share", axis=alt.Axis(format="%")),
            color=alt.Color("answer:N", title="Answer", sort=["yes", "no"]),
            tooltip=[
                alt.Tooltip("label:N", title="Condition"),
                alt.Tooltip("branch:N", title="Branch"),
                alt.Tooltip("enrollments:Q", title="Enrollments", format=","),
                alt.Tooltip("share:Q", title="Share", format=RATE_FORMAT),
            ],
        )
        .properties(height=max(80, 48 * conditions.height))
    )


def step_exits(exits: pl.DataFrame) -> alt.Chart:
    """Early exits per step, stacked by reason."""
    frame = exits.with_columns(
        pl.format("{}. {}", pl.col("step_order").fill_null(0), "step_key").alias("label")
    )
    return (
        alt.Chart(frame.to_pandas())
        .mark_bar()
        .encode(
            y=alt.Y(
                "label:N",
                title=None,
                sort=frame["label"].unique(maintain_order=True).to_list(),
                axis=alt.Axis(labelLimit=LABEL_LIMIT),
            ),
            x=alt.X("exited:Q", title="Enrollments that left", axis=count_axis()),
            color=alt.Color("exit_reason:N", title="Reason"),
            tooltip=[
                alt.Tooltip("label:N", title="Step"),
                alt.Tooltip("exit_reason:N", title="Reason"),
                alt.Tooltip("exited:Q", title="Enrollments", format=","),
            ],
        )
        .properties(height=max(100, 40 * frame["label"].n_unique()))
    )


def variant_rates(variants: pl.DataFrame, rates: list[str]) -> alt.Chart:
    """Each variant's rates, grouped by step and rate."""
    long = (
        variants.with_columns(pl.format("{} · variant {}", "step_key", "variant").alias("label"))
        .select("label", "variant", "sent", *rates)
        .unpivot(index=["label", "variant", "sent"], variable_name="metric", value_name="rate")
        .with_columns(pl.col("metric").replace_strict(RATES).alias("rate_name"))
    )
    return (
        alt.Chart(long.to_pandas())
        .mark_bar()
        .encode(
            x=alt.X("rate_name:N", title=None, axis=alt.Axis(labelAngle=0)),
            xOffset="label:N",
            y=alt.Y("rate:Q", title="Rate", axis=alt.Axis(format="%")),
            color=alt.Color("label:N", title="Variant"),
            tooltip=[
                alt.Tooltip("label:N", title="Variant"),
                alt.Tooltip("rate_name:N", title="Metric"),
                alt.Tooltip("rate:Q", title="Rate", format=RATE_FORMAT),
                alt.Tooltip("sent:Q", title="Sent", format=","),
            ],
        )
        .properties(height=280)
    )
