"""Campaigns: every campaign with its status, dates and rates in the period; one campaign's
daily trend and settings (`?campaign_page=<id>`)."""

import polars as pl
import streamlit as st

from dashboards import charts, data, filters, ui

st.title("Campaigns")
view = filters.sidebar(
    senders=True,
    none_yet="No tenant yet. Create one (`penguin tenant create`), then a campaign "
    "(`penguin campaign apply`).",
)
st.caption(data.data_as_of_caption())

table = data.campaigns(view.params())
if table.is_empty():
    st.info(
        f"{view.tenant_name} has no campaigns yet. Write a campaign file and apply it "
        "(`penguin campaign apply campaign.yaml`), then launch it."
    )
    st.stop()

st.caption(f"Rates of the messages sent {view.start} – {view.end}; blank where none were.")
shown = table.select(
    "campaign_name",
    "campaign_status",
    "launched_at",
    "completed_at",
    "steps",
    "sent",
    "delivery_rate",
    "open_rate",
    "click_rate",
    "reply_rate",
    "bounce_rate",
    "unsubscribe_rate",
)
st.dataframe(
    shown,
    hide_index=True,
    width="stretch",
    column_config={
        "campaign_name": "Campaign",
        "campaign_status": "Status",
        "launched_at": st.column_config.DatetimeColumn("Launched", format="YYYY-MM-DD HH:mm"),
        "completed_at": st.column_config.DatetimeColumn("Completed", format="YYYY-MM-DD HH:mm"),
        "steps": st.column_config.NumberColumn("Steps"),
        **ui.METRIC_COLUMNS,
    },
)
ui.download(shown, f"campaigns-{view.tenant_name}-{view.start}-{view.end}", key="campaigns")

st.divider()
names = dict(table.select("campaign_id", "campaign_name").iter_rows())
picked = st.selectbox(
    "Campaign",
    list(names),
    format_func=names.get,
    index=None,
    placeholder="Pick a campaign to see its trend and settings",
    key="campaign_page",
    bind="query-params",
)
if picked is None:
    st.stop()

settings = data.campaign_settings(view.tenant_id, picked)
st.subheader(names[picked])
one = {**view.params(), "campaign_ids": [picked]}
totals = data.totals(one)
previous_start, previous_end = view.previous
ui.kpi_tiles(totals, data.totals({**one, "start": previous_start, "end": previous_end}))
trend = data.daily(one)
if trend.is_empty():
    st.info(f"No messages of this campaign were sent between {view.start} and {view.end}.")
else:
    st.altair_chart(
        charts.daily_trend(trend, view.start, view.end, ["open_rate", "reply_rate"]),
        width="stretch",
    )
if settings is not None:
    st.subheader("Settings")
    rows = pl.DataFrame({"setting": list(settings), "value": [str(v) for v in settings.values()]})
    st.dataframe(rows, hide_index=True, width="content")
