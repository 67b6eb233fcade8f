"""Sends: how many messages went out per day and campaign, and what came back."""

from datetime import UTC, datetime, timedelta

import streamlit as st

from dashboards import charts, data, ui

st.title("Sends")
st.caption("Messages per campaign and day, from the `campaign_daily` mart.")

# Filters
tenant = data.pick_tenant(
    data.tenants,
    "Nothing has been sent yet. Launch a campaign; the marts rebuild after each send run.",
)
today = datetime.now(UTC).date()  # the marts' days are the tenant's reporting days
picked = st.sidebar.date_input("Days", value=(today - timedelta(days=29), today), max_value=today)
start, end = picked if isinstance(picked, tuple) and len(picked) == 2 else (picked, picked)

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
        "bounce_rate": st.column_config.NumberColumn("Bounce rate", format="percent"),
        "open_rate": st.column_config.NumberColumn("Open rate", format="percent"),
        "click_rate": st.column_config.NumberColumn("Click rate", format="percent"),
    },
)
ui.download(frame, f"sends-{tenant}-{start}-{end}")
