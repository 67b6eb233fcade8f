"""Contacts: the lists' growth, the engagement score's distribution, the most engaged
contacts (the leads, exportable) and the suppressions by reason."""

import streamlit as st

from dashboards import charts, data, filters, ui

st.title("Contacts")
view = filters.sidebar(
    campaigns=False,
    senders=False,
    none_yet="No tenant yet. Create one (`penguin tenant create`), then upload contacts.",
)
st.caption(data.data_as_of_caption())

growth = data.list_growth(view.tenant_id, view.end)
statuses = data.contact_statuses(view.tenant_id)
if growth.is_empty() and statuses.is_empty():
    st.info(
        f"{view.tenant_name} has no contacts yet. Upload a CSV on the Uploads page (or "
        "`penguin upload file.csv --list <name>`)."
    )
    st.stop()

columns = st.columns(max(1, statuses.height))
for column, (status, contacts) in zip(columns, statuses.iter_rows(), strict=False):
    column.metric(status.title(), ui.count(contacts))

st.subheader("List growth")
if growth.is_empty():
    st.info("No contact is on a list yet.")
else:
    st.altair_chart(charts.list_growth(growth, view.start, view.end), width="stretch")

st.subheader("Engagement score")
st.caption(
    "Active contacts by engagement score: 5 per message opened, 15 per message clicked, 40 per "
    "reply, at most 100 (machine opens count for nothing)."
)
bands = data.score_bands(view.tenant_id)
if bands.is_empty():
    st.info("No active contacts.")
else:
    st.altair_chart(charts.score_bands(bands), width="stretch")

st.subheader("Most engaged contacts")
leads = data.leads(view.tenant_id)
if leads.is_empty():
    st.info("Nobody has opened, clicked or replied yet.")
else:
    st.dataframe(
        leads,
        hide_index=True,
        placeholder=ui.MISSING,
        width="stretch",
        column_config={
            "email": "Email",
            "first_name": "First name",
            "last_name": "Last name",
            "company": "Company",
            "job_title": "Title",
            "engagement_score": st.column_config.ProgressColumn(
                "Score", format="%d", min_value=0, max_value=100
            ),
            "messages_sent": st.column_config.NumberColumn("Sent", format="localized"),
            "messages_opened": st.column_config.NumberColumn("Opened", format="localized"),
            "messages_clicked": st.column_config.NumberColumn("Clicked", format="localized"),
            "messages_replied": st.column_config.NumberColumn("Replied", format="localized"),
            "last_open_at": st.column_config.DatetimeColumn("Last open", format="YYYY-MM-DD"),
            "last_click_at": st.column_config.DatetimeColumn("Last click", format="YYYY-MM-DD"),
            "last_reply_at": st.column_config.DatetimeColumn("Last reply", format="YYYY-MM-DD"),
            "lists": st.column_config.ListColumn("Lists"),
        },
    )
    ui.download(leads, f"leads-{view.tenant_name}", key="leads")

st.subheader("Suppressions")
suppressed = data.suppressions(view.tenant_id, view.start, view.end)
if suppressed.is_empty():
    st.info(f"No address was suppressed between {view.start} and {view.end}.")
else:
    st.caption(f"Addresses suppressed {view.start} – {view.end}, by reason.")
    st.dataframe(
        suppressed,
        hide_index=True,
        placeholder=ui.MISSING,
        column_config={
            "reason": "Reason",
            "suppressions": st.column_config.NumberColumn("Addresses", format="localized"),
        },
    )
    ui.download(suppressed, f"suppressions-{view.tenant_name}", key="suppressions")
