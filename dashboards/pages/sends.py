"""Sends: how many messages went out per day and campaign, and what came back (the sidebar's
tenant and period, as on every page)."""

from datetime import UTC, datetime

import streamlit as st

from dashboards import charts, data, filters, ui

st.title("Sends")
st.caption("Messages per campaign and day, from the `campaign_daily` mart.")

# Filters
view = filters.sidebar(
    campaigns=False,
    senders=False,
    none_yet="No tenant yet. Create one (`penguin tenant create`), then launch a campaign; the "
    "marts rebuild after each send run.",
)
tenant, start, end = view.tenant_name, view.start, view.end
today = datetime.now(UTC).date()  # the marts' days are the tenant's reporting days

st.caption(data.data_as_of_caption())
frame = data.campaign_daily(tenant, start, end)
if frame.is_empty():
    st.info(f"No sends for tenant {tenant} between {start} and {end}.")
    st.stop()

# Headline figures (the rates as the marts define them, over the range's sums)
totals = data.campaign_daily_totals(tenant, start, end)
sent_today = int(frame.filter(frame["day"] == today)["sent"].sum())
left, middle, right, last = st.columns(4)
left.metric("Sent today", ui.count(sent_today))
middle.metric("Sent in range", ui.count(totals["sent"]))
right.metric("Bounce rate", ui.percent(totals["bounce_rate"]))
last.metric("Open rate", ui.percent(totals["open_rate"]))

# Chart
st.altair_chart(charts.daily_sends(frame, start, end), width="stretch")

# Table
st.subheader("Per campaign and day")
st.dataframe(
    frame,
    hide_index=True,
    placeholder=ui.MISSING,
    width="stretch",
    column_config={
        "day": st.column_config.DateColumn("Send day", format="YYYY-MM-DD"),
        "campaign_name": "Campaign",
        "sent": st.column_config.NumberColumn("Sent"),
        "delivered": st.column_config.NumberColumn("Delivered"),
        "bounced_hard": st.column_config.NumberColumn("Hard bounces"),
        "bounced_soft": st.column_config.NumberColumn("Soft bounces"),
        "failed": st.column_config.NumberColumn("Failed"),
        "unknown": st.column_config.NumberColumn(
            "Unknown", help="Outcome unknown after a worker stopped mid-send; not resent"
        ),
        "pending": st.column_config.NumberColumn("Pending"),
        "unique_opens": st.column_config.NumberColumn("Opened"),
        "unique_clicks": st.column_config.NumberColumn("Clicked"),
        "replies": st.column_config.NumberColumn("Replied"),
        "bounce_rate": ui.rate_column("Bounce rate"),
        "open_rate": ui.rate_column("Open rate"),
        "click_rate": ui.rate_column("Click rate"),
    },
)
ui.download(frame, f"sends-{tenant}-{start}-{end}")
