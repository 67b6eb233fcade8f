"""Deliverability: bounces, complaints and unsubscribes by sender and by recipient domain,
over time; the senders near their daily limits; the share of opens machines made."""

import streamlit as st

from dashboards import charts, data, filters, ui

st.title("Deliverability")
view = filters.sidebar(
    none_yet="No tenant yet. Create one (`penguin tenant create`), then upload contacts and "
    "launch a campaign.",
)
st.caption(data.data_as_of_caption())

now = data.totals(view.params())
if not now["sent"]:
    st.info(
        f"Nothing was sent between {view.start} and {view.end} with these filters: there is "
        "nothing to bounce yet. Pick a longer period or fewer filters, or launch a campaign."
    )
    st.stop()

columns = st.columns(6)
columns[0].metric("Hard bounces", ui.count(now["bounced_hard"]))
columns[1].metric("Soft bounces", ui.count(now["bounced_soft"]))
columns[2].metric("Bounce rate", ui.percent(now["bounce_rate"]))
columns[3].metric("Complaints", ui.count(now["complaints"]))
columns[4].metric("Unsubscribes", ui.count(now["unsubscribes"]))
columns[5].metric(
    "Machine-open share",
    ui.percent(now["machine_open_share"]),
    help="Opens made by machines (privacy proxies, scanners) among all opens; not counted "
    "as opens in the rates.",
)

st.subheader("Over time")
st.altair_chart(
    charts.daily_trend(
        data.daily(view.params()),
        view.start,
        view.end,
        ["bounce_rate", "complaint_rate", "unsubscribe_rate", "machine_open_share"],
    ),
    width="stretch",
)

st.subheader("By sender")
senders = data.senders(view.params())
ui.near_limit_warning(senders)
by_sender = senders.select(
    "sender_email",
    "sent",
    "bounced_hard",
    "bounced_soft",
    "bounce_rate",
    "complaints",
    "complaint_rate",
    "unsubscribes",
    "unsubscribe_rate",
    "busiest_day_share",
)
st.dataframe(
    by_sender,
    hide_index=True,
    placeholder=ui.MISSING,
    width="stretch",
    column_config={
        "sender_email": "Sender",
        "busiest_day_share": st.column_config.ProgressColumn(
            "Busiest day, of the limit", format="percent", min_value=0, max_value=1
        ),
        **ui.METRIC_COLUMNS,
    },
)
ui.download(by_sender, f"deliverability-senders-{view.tenant_name}", key="by_sender")

st.subheader("By recipient domain")
st.caption("The 25 domains with the most messages; campaign and sender filters do not apply.")
domains = data.domains(view.tenant_id, view.start, view.end).select(
    "recipient_domain",
    "sent",
    "bounced_hard",
    "bounced_soft",
    "bounce_rate",
    "complaints",
    "complaint_rate",
    "unsubscribe_rate",
    "machine_open_share",
)
st.dataframe(
    domains,
    hide_index=True,
    placeholder=ui.MISSING,
    width="stretch",
    column_config={"recipient_domain": "Domain", **ui.METRIC_COLUMNS},
)
ui.download(domains, f"deliverability-domains-{view.tenant_name}", key="by_domain")
