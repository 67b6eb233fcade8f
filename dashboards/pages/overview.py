"""Overview: the period's KPIs against the period before, the daily trend, and the campaigns
that moved most. From the `campaign_sender_daily` mart (every filter applies)."""

import polars as pl
import streamlit as st

from dashboards import charts, data, filters, ui

st.title("Overview")
view = filters.sidebar(
    none_yet="No tenant yet. Create one (`penguin tenant create`), then upload contacts and "
    "launch a campaign; the marts rebuild after each send run."
)
st.caption(data.data_as_of_caption())

now = data.totals(view.params())
previous_start, previous_end = view.previous
before = data.totals({**view.params(), "start": previous_start, "end": previous_end})
st.caption(
    f"{view.start:%b %d} – {view.end:%b %d, %Y} ({view.days} days), against "
    f"{previous_start:%b %d} – {previous_end:%b %d} before it."
)
if not now["sent"]:
    if data.last_active_tenant() is None:
        st.info(
            "Nothing has been sent yet. Upload contacts (the Uploads page), then create and "
            "launch a campaign (`penguin campaign apply`); the marts rebuild after each send run."
        )
    else:
        st.info(
            f"Nothing was sent between {view.start} and {view.end} with these filters. Pick a "
            "longer period or fewer filters in the sidebar."
        )
    st.stop()
ui.kpi_tiles(now, before)

st.subheader("Daily trend")
shown = st.multiselect(
    "Rates",
    list(charts.RATES),
    default=["open_rate", "reply_rate", "bounce_rate"],
    format_func=charts.RATES.get,
    key="rates",
)
frame = data.daily(view.params())
st.altair_chart(charts.daily_trend(frame, view.start, view.end, shown), width="stretch")

st.subheader("Campaigns that moved most")
st.caption("By the change in messages sent against the previous period; rates beside.")
current = data.per_campaign(view.params())
earlier = data.per_campaign({**view.params(), "start": previous_start, "end": previous_end})
moved = (
    current.join(
        earlier.select(
            "campaign_id",
            pl.col("sent").alias("sent_before"),
            pl.col("open_rate").alias("open_rate_before"),
            pl.col("reply_rate").alias("reply_rate_before"),
        ),
        on="campaign_id",
        how="full",
        coalesce=True,
    )
    .with_columns(
        pl.col("sent").fill_null(0),
        pl.col("sent_before").fill_null(0),
        pl.col("campaign_name").fill_null(pl.col("campaign_id")),
    )
    .with_columns(
        (pl.col("sent") - pl.col("sent_before")).alias("sent_change"),
        # in percentage points, as the KPI tiles' changes
        ((pl.col("open_rate") - pl.col("open_rate_before")) * 100).alias("open_rate_change_pp"),
        ((pl.col("reply_rate") - pl.col("reply_rate_before")) * 100).alias("reply_rate_change_pp"),
    )
    .sort(pl.col("sent_change").abs(), descending=True)
    .select(
        "campaign_name",
        "sent",
        "sent_before",
        "sent_change",
        "open_rate",
        "open_rate_change_pp",
        "reply_rate",
        "reply_rate_change_pp",
    )
    .head(10)
)
st.dataframe(
    moved,
    hide_index=True,
    placeholder=ui.MISSING,
    width="stretch",
    column_config={
        "campaign_name": "Campaign",
        "sent": st.column_config.NumberColumn("Sent", format="localized"),
        "sent_before": st.column_config.NumberColumn("Sent before", format="localized"),
        "sent_change": st.column_config.NumberColumn("Change", format="%+d"),
        "open_rate": ui.rate_column("Open rate"),
        "open_rate_change_pp": ui.points_column("Open rate change"),
        "reply_rate": ui.rate_column("Reply rate"),
        "reply_rate_change_pp": ui.points_column("Reply rate change"),
    },
)
ui.download(moved, f"campaigns-moved-{view.tenant_name}-{view.start}-{view.end}", key="moved")
