"""Presentation helpers shared by the pages: number formats, KPI tiles, CSV downloads.

Every rate reads the same wherever it is: in percent with at most RATE_DECIMALS decimals,
trailing zeros dropped ("3.45%", "0.9%", "100%"), as Streamlit's "percent" column format writes
it. A KPI tile uses `percent`, a table column `rate_column`, a chart's tooltip or label
`RATE_FORMAT` (d3's `~` drops the zeros), so one rate never reads 3.45% in a table and 3.4%
beside it. A change of a rate is in percentage points with RATE_DECIMALS decimals, in a tile's
delta (`change`) as in a table (`points_column`). A missing value (no denominator, no date yet,
no error) shows as MISSING, never "None".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime, time

import polars as pl
import streamlit as st

from engine.ingest.rejects import safe_csv
from engine.sequence.rules import campaign_timezone

#: The KPI tiles: (metric, label, whether a rise is bad).
KPIS = (
    ("sent", "Sent", False),
    ("delivery_rate", "Delivered", False),
    ("open_rate", "Open rate", False),
    ("click_rate", "Click rate", False),
    ("reply_rate", "Reply rate", False),
    ("bounce_rate", "Bounce rate", True),
    ("unsubscribe_rate", "Unsubscribe rate", True),
)


#: What a table cell or a tile shows for a missing value (st.dataframe's `placeholder`).
MISSING = "—"

#: Decimals of a rate in percent, at most: those of Streamlit's "percent" column format.
RATE_DECIMALS = 2
#: A rate's d3 format, for charts' tooltips and labels.
RATE_FORMAT = f".{RATE_DECIMALS}~%"


def count(value: int | None) -> str:
    return MISSING if value is None else f"{int(value):,}"


def percent(value: float | None) -> str:
    """A rate (a fraction) as the tables and charts show it: "3.45%", "0.9%", "100%"."""
    if value is None:
        return MISSING
    digits = f"{value * 100:.{RATE_DECIMALS}f}".rstrip("0").rstrip(".")
    return f"{'0' if digits == '-0' else digits}%"


def rate_column(label: str, **kwargs: object) -> st.column_config.NumberColumn:
    """A table column of rates (fractions), formatted as `percent` formats a tile."""
    return st.column_config.NumberColumn(label, format="percent", **kwargs)


def points_column(label: str) -> st.column_config.NumberColumn:
    """A table column of changes of a rate, in percentage points (`points` made them)."""
    return st.column_config.NumberColumn(label, format=f"%+.{RATE_DECIMALS}f pp")


def moment(value: datetime | None, zone: str | None = None) -> str:
    """A timestamp in full, to the second, in the zone `zone` names (UTC when it names none),
    the zone named: "2026-12-08 10:30:05 Europe/Berlin"."""
    if value is None:
        return MISSING
    tz = campaign_timezone(zone)
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)
    return f"{aware.astimezone(tz):%Y-%m-%d %H:%M:%S} {tz.key}"


#: A campaign's settings (`data.campaign_settings`) as the page names them, in this order.
SETTINGS = {
    "campaign_name": "Name",
    "campaign_status": "Status",
    "campaign_timezone": "Time zone",
    "created_at": "Created",
    "launched_at": "Launched",
    "completed_at": "Completed",
    "send_window_start": "Send window opens",
    "send_window_end": "Send window closes",
    "send_days": "Send days",
    "daily_limit": "Daily limit",
    "stop_on_reply": "Stop on reply",
    "track_opens": "Track opens",
    "track_clicks": "Track clicks",
    "steps": "Steps",
    "email_steps": "Email steps",
}
#: ISO weekdays (`send_days`: 1 is Monday), as the settings show them.
WEEKDAYS = {1: "Mon", 2: "Tue", 3: "Wed", 4: "Thu", 5: "Fri", 6: "Sat", 7: "Sun"}
#: `stop_on_reply`'s values, in words.
STOP_ON_REPLY = {
    "contact": "the contact's sequence stops",
    "company": "every enrollment of the contact's company stops",
    "never": "never stops",
}


def settings_table(settings: Mapping) -> pl.DataFrame:
    """A campaign's settings as (Setting, Value) rows a person reads: labels, not column names;
    timestamps in full in the campaign's time zone (named); days, flags and limits in words."""
    zone = settings.get("campaign_timezone")

    def shown(key: str, value: object) -> str:
        if value is None:
            return MISSING
        if isinstance(value, datetime):
            return moment(value, zone)
        if isinstance(value, time):
            return f"{value:%H:%M} {campaign_timezone(zone).key}"
        if isinstance(value, bool):
            return "yes" if value else "no"
        if key == "send_days":
            return ", ".join(WEEKDAYS.get(int(day), str(day)) for day in value)
        if key == "stop_on_reply":
            return STOP_ON_REPLY.get(str(value), str(value))
        if isinstance(value, int):
            return f"{value:,}"
        return str(value)

    keys = [key for key in SETTINGS if key in settings]
    return pl.DataFrame(
        {
            "Setting": [SETTINGS[key] for key in keys],
            "Value": [shown(key, settings[key]) for key in keys],
        }
    )


def change(metric: str, now: Mapping, before: Mapping) -> str | None:
    """The change of `metric` against the previous period: a count's in percent, a rate's in
    percentage points; None when either side has none."""
    a, b = now.get(metric), before.get(metric)
    if a is None or b is None:
        return None
    if metric.endswith("_rate"):
        return f"{(a - b) * 100:+.{RATE_DECIMALS}f} pp"
    if b == 0:
        return None
    return f"{(a - b) / b:+.0%}"


def kpi_tiles(now: Mapping, before: Mapping) -> None:
    """One tile per KPI, with its change against the previous period of equal length."""
    for column, (metric, label, rise_is_bad) in zip(st.columns(len(KPIS)), KPIS, strict=True):
        value = now.get(metric)
        shown = percent(value) if metric.endswith("_rate") else count(value)
        column.metric(
            label,
            shown,
            delta=change(metric, now, before),
            delta_color="inverse" if rise_is_bad else "normal",
        )


#: A sender whose busiest day of the period reached this share of its daily limit is near it.
NEAR_LIMIT = 0.9


def near_limit_warning(senders: pl.DataFrame) -> None:
    """A warning naming the senders (`data.senders` rows) near their daily limit, if any."""
    near = senders.filter(pl.col("busiest_day_share") >= NEAR_LIMIT)
    if near.height:
        st.warning(
            f"Near their daily limit ({NEAR_LIMIT:.0%} or more on a day of the period): "
            f"{', '.join(near['sender_email'])}."
        )


def csv_text(frame: pl.DataFrame) -> str:
    """`frame` as CSV a spreadsheet opens safely: dates in ISO, lists joined, and every text
    cell that a spreadsheet would run as a formula (a campaign or step named "=...")
    neutralized."""
    flat = frame.with_columns(
        [pl.col(c).list.join("; ") for c, t in frame.schema.items() if isinstance(t, pl.List)]
    )
    return safe_csv(flat)


def download(
    frame: pl.DataFrame | Callable[[], pl.DataFrame],
    name: str,
    *,
    label: str = "Download CSV",
    tip: str | None = None,
    key: str | None = None,
) -> None:
    """A download button for `frame` as `name`.csv, through `csv_text`: the one way a page
    offers a CSV (tests/dashboards/test_ui.py holds every page to it). `frame` may be a
    function, called only when the button is clicked (a download too big to make on every
    rerun); `tip` is the button's tooltip."""
    data = (lambda: csv_text(frame())) if callable(frame) else csv_text(frame)
    st.download_button(label, data, file_name=f"{name}.csv", mime="text/csv", help=tip, key=key)


#: Column formats of the metric tables.
METRIC_COLUMNS = {
    "sent": st.column_config.NumberColumn("Sent", format="localized"),
    "delivered": st.column_config.NumberColumn("Delivered", format="localized"),
    "bounced_hard": st.column_config.NumberColumn("Hard bounces", format="localized"),
    "bounced_soft": st.column_config.NumberColumn("Soft bounces", format="localized"),
    "unique_opens": st.column_config.NumberColumn("Opened", format="localized"),
    "unique_clicks": st.column_config.NumberColumn("Clicked", format="localized"),
    "replies": st.column_config.NumberColumn("Replied", format="localized"),
    "unsubscribes": st.column_config.NumberColumn("Unsubscribed", format="localized"),
    "complaints": st.column_config.NumberColumn("Complaints", format="localized"),
    "machine_opens": st.column_config.NumberColumn("Machine opens", format="localized"),
    **{
        rate: rate_column(label)
        for rate, label in (
            ("delivery_rate", "Delivery rate"),
            ("bounce_rate", "Bounce rate"),
            ("open_rate", "Open rate"),
            ("click_rate", "Click rate"),
            ("reply_rate", "Reply rate"),
            ("unsubscribe_rate", "Unsubscribe rate"),
            ("complaint_rate", "Complaint rate"),
            ("machine_open_share", "Machine-open share"),
        )
    },
}
