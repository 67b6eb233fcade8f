"""Presentation helpers shared by the pages: number formats, KPI tiles, CSV downloads."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import polars as pl
import streamlit as st

from engine.ingest.rejects import safe_csv

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


def count(value: int | None) -> str:
    return "–" if value is None else f"{int(value):,}"


def percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def change(metric: str, now: Mapping, before: Mapping) -> str | None:
    """The change of `metric` against the previous period: a count's in percent, a rate's in
    percentage points; None when either side has none."""
    a, b = now.get(metric), before.get(metric)
    if a is None or b is None:
        return None
    if metric.endswith("_rate"):
        return f"{(a - b) * 100:+.1f} pp"
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
        rate: st.column_config.NumberColumn(label, format="percent")
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
