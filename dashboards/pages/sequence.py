"""Sequence: one campaign's step funnel (`?sequence=<campaign name>`): how many enrollments
reached each step and went on, the split at each condition, who left early and why, and the A/B
comparison of steps with variants. The funnel covers the campaign's whole life (the engine's
step history); the A/B figures, the messages sent in the sidebar's period."""

import streamlit as st

from dashboards import charts, data, filters, ui

st.title("Sequence")
view = filters.sidebar(
    campaigns=False,
    senders=False,
    none_yet="No tenant yet. Create one (`penguin tenant create`), then a campaign "
    "(`penguin campaign apply`).",
)
st.caption(data.data_as_of_caption())

names = data.campaign_choices(view.tenant_id)
if not names:
    st.info(
        f"{view.tenant_name} has no campaigns yet. Write a campaign file and apply it "
        "(`penguin campaign apply campaign.yaml`), then launch it."
    )
    st.stop()
campaign = st.selectbox(
    "Campaign", list(names), format_func=names.get, key="sequence", bind="query-params"
)
name = names[campaign]
funnel = data.step_funnel(view.tenant_id, campaign)
enrolled = int(funnel["enrolled"].max() or 0) if funnel.height else 0
if enrolled == 0:
    st.info(
        f"No one has entered {name}'s sequence yet. Launch it (`penguin campaign launch`) and "
        "put contacts on its list (the Uploads page): the engine's next pass enrolls them."
    )
    st.stop()

tiles = st.columns(4)
tiles[0].metric("Enrolled", ui.count(enrolled))
tiles[1].metric("Completed", ui.count(funnel["completed"].sum()))
tiles[2].metric("Exited early", ui.count(funnel["exited"].sum()))
tiles[3].metric("Still in the sequence", ui.count(funnel["standing"].sum()))

st.subheader("Step funnel")
st.caption(
    "Enrollments that reached each step, over the campaign's whole life; the label is their "
    "share of the enrolled. A step visited again after a wait counts each visit."
)
table = funnel  # its shares and rates as the marts define them (step_funnel)
st.altair_chart(charts.step_funnel(table), width="stretch")
table = table.select(
    "step_order",
    "step_key",
    "step_type",
    "reached",
    "of_enrolled",
    "moved_on",
    "went_on",
    "exited",
    "standing",
    "sent",
    "delivered",
    "opened",
    "open_rate",
    "clicked",
    "click_rate",
    "replied",
    "reply_rate",
)
count = {"format": "localized"}
st.dataframe(
    table,
    hide_index=True,
    placeholder=ui.MISSING,
    width="stretch",
    column_config={
        "step_order": st.column_config.NumberColumn("#", format="%d"),
        "step_key": "Step",
        "step_type": "Type",
        "reached": st.column_config.NumberColumn("Reached", **count),
        "of_enrolled": ui.rate_column("Of enrolled"),
        "moved_on": st.column_config.NumberColumn("Went on", **count),
        "went_on": ui.rate_column("Conversion"),
        "exited": st.column_config.NumberColumn("Exited", **count),
        "standing": st.column_config.NumberColumn("Still here", **count),
        "sent": st.column_config.NumberColumn("Sent", **count),
        "delivered": st.column_config.NumberColumn("Delivered", **count),
        "opened": st.column_config.NumberColumn("Opened", **count),
        "open_rate": ui.rate_column("Open rate"),
        "clicked": st.column_config.NumberColumn("Clicked", **count),
        "click_rate": ui.rate_column("Click rate"),
        "replied": st.column_config.NumberColumn("Replied", **count),
        "reply_rate": ui.rate_column("Reply rate"),
    },
)
st.caption(
    "Open, click and reply rates here are of the messages delivered (people, not machines), "
    "as on every page."
)
ui.download(table, f"funnel-{name}", key="funnel")

if (funnel["step_type"] == "condition").any():
    st.subheader("Condition splits")
    st.altair_chart(charts.condition_split(funnel), width="stretch")

st.subheader("Exits by reason")
exits = data.step_exits(view.tenant_id, campaign)
if exits.is_empty():
    st.caption("No enrollment has left this sequence early.")
else:
    st.altair_chart(charts.step_exits(exits), width="stretch")
    shown = exits.select("step_key", "exit_reason", "exited")
    st.dataframe(
        shown,
        hide_index=True,
        placeholder=ui.MISSING,
        column_config={
            "step_key": "Step",
            "exit_reason": "Reason",
            "exited": st.column_config.NumberColumn("Enrollments", **count),
        },
    )
    ui.download(shown, f"exits-{name}", key="exits")

st.subheader("A/B variants")
variants = data.step_variants(view.tenant_id, campaign, view.start, view.end)
if not funnel["has_variants"].any():
    st.caption(
        "No step of this campaign has variants. Give an email step `variants:` in the campaign "
        "file to compare subjects or texts."
    )
elif variants.is_empty():
    st.info(f"No message of a step with variants was sent between {view.start} and {view.end}.")
else:
    st.caption(f"Messages sent {view.start} – {view.end}, per step and variant.")
    rates = ["open_rate", "click_rate", "reply_rate"]
    st.altair_chart(charts.variant_rates(variants, rates), width="stretch")
    shown = variants.select("step_key", "variant", "sent", "delivered", *rates, "bounce_rate")
    st.dataframe(
        shown,
        hide_index=True,
        placeholder=ui.MISSING,
        column_config={"step_key": "Step", "variant": "Variant", **ui.METRIC_COLUMNS},
    )
    ui.download(shown, f"variants-{name}-{view.start}-{view.end}", key="variants")
