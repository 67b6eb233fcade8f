"""Senders: each account's volume against its daily limit, with its bounce and reply rates."""

import streamlit as st

from dashboards import data, filters, ui

st.title("Senders")
view = filters.sidebar(
    none_yet="No tenant yet. Create one (`penguin tenant create`), then add a sender "
    "(`penguin sender add`).",
)
st.caption(data.data_as_of_caption())

table = data.senders(view.params())
if table.is_empty():
    st.info(
        f"{view.tenant_name} has no sender accounts yet. Add one with `penguin sender add` "
        "(its address, SMTP server and daily limit)."
    )
    st.stop()

ui.near_limit_warning(table)
st.caption(
    f"Messages sent {view.start} – {view.end}. Busiest day: the most one account sent in a day "
    "of the period, against its daily limit."
)
shown = table.select(
    "sender_email",
    "is_active",
    "daily_limit",
    "last_day_sent",
    "busiest_day_sent",
    "busiest_day_share",
    "sent",
    "bounce_rate",
    "reply_rate",
    "complaint_rate",
)
st.dataframe(
    shown,
    hide_index=True,
    placeholder=ui.MISSING,
    width="stretch",
    column_config={
        "sender_email": "Sender",
        "is_active": st.column_config.CheckboxColumn("Active"),
        "daily_limit": st.column_config.NumberColumn("Daily limit", format="localized"),
        "last_day_sent": st.column_config.NumberColumn(f"Sent on {view.end}", format="localized"),
        "busiest_day_sent": st.column_config.NumberColumn("Busiest day", format="localized"),
        "busiest_day_share": st.column_config.ProgressColumn(
            "Of the limit", format="percent", min_value=0, max_value=1
        ),
        **ui.METRIC_COLUMNS,
    },
)
ui.download(shown, f"senders-{view.tenant_name}-{view.start}-{view.end}", key="senders")
