"""Campaigns: every campaign with its status, dates and rates in the period; one campaign's
daily trend, send forecast (the marts' `campaign_forecasts`, which every analytics run
simulates anew) and settings (`?campaign_page=<id>`), and the operators' corner that pauses and
resumes it."""

import polars as pl
import streamlit as st

from dashboards import charts, data, filters, operate, ui
from engine.campaigns import CampaignError
from engine.text import shown as plain

#: What each action does, as its confirmation says.
ACTIONS = {
    "Pause": "Nothing more goes out until it is resumed; enrollments keep their place.",
    "Resume": "Sending starts again at the engine's next pass, within the campaign's window.",
}


def operators_corner(tenant_id: str, campaign_id: str, name: str) -> None:
    """The campaign's live status and a Pause or Resume button with a confirmation."""
    st.subheader("Operators' corner")
    outcome = st.session_state.pop("operate_outcome", None)
    if outcome is not None:
        kind, message = outcome
        (st.success if kind == "success" else st.error)(message)
    try:
        status = operate.live_status(tenant_id, campaign_id)
    except operate.OperatorUnavailableError as exc:
        st.warning(str(exc))
        return
    if status is None:
        st.info("This campaign is no longer in the database; the marts are a build behind.")
        return
    st.markdown(f"Status now: **{status}** (the table above shows the marts' last build).")
    action = {"active": "Pause", "scheduled": "Pause", "paused": "Resume"}.get(status)
    if action is None:
        st.caption(f"A {status} campaign can be neither paused nor resumed here.")
        return
    if st.button(f"{action} campaign", key="operate"):
        st.session_state["operate_pending"] = (campaign_id, action)
    if st.session_state.get("operate_pending") != (campaign_id, action):
        return
    st.warning(f"{action} {plain(name)}? {ACTIONS[action]}")
    confirm, cancel = st.columns(2)
    if confirm.button(f"Yes, {action.lower()} it", key="operate_confirm", type="primary"):
        change = operate.pause if action == "Pause" else operate.resume
        try:
            now = change(tenant_id, campaign_id)
        except (CampaignError, operate.OperatorUnavailableError) as exc:
            st.session_state["operate_outcome"] = ("error", f"{action} refused: {exc}")
        else:
            st.session_state["operate_outcome"] = ("success", f"{plain(name)} is now {now}.")
        del st.session_state["operate_pending"]
        st.rerun()
    if cancel.button("Cancel", key="operate_cancel"):
        del st.session_state["operate_pending"]
        st.rerun()


def step_label(order: pl.Expr, key: pl.Expr) -> pl.Expr:
    """An email step as a column heading: "Step 2", or "Step 2: follow-up" when its key is a
    name rather than its number ("Step follow-up" for a step removed since the forecast)."""
    return (
        pl.when(order.is_null())
        .then(pl.format("Step {}", key))
        .when(key == order.cast(pl.String))
        .then(pl.format("Step {}", order))
        .otherwise(pl.format("Step {}: {}", order, key))
    )


def send_forecast(tenant_id: str, campaign_id: str, name: str, sent: pl.DataFrame) -> None:
    """The days sent in the period beside the stored forecast of the days to come (the last
    analytics run's simulation, `campaign_forecasts`), as a table too."""
    st.subheader("Send forecast")
    head, ahead = data.campaign_forecast(tenant_id, campaign_id)
    if head is None:
        st.info(
            "No forecast of this campaign yet: the next analytics run makes one (start "
            "`analytics_job` in the Dagster UI, or wait for the freshness sensor)."
        )
        return
    as_of = head["forecast_at"].strftime("%Y-%m-%d %H:%M UTC")
    if head["forecast_error"]:
        st.warning(f"This campaign cannot be forecast: {plain(head['forecast_error'], 300)}")
        st.caption(f"Tried at {as_of}.")
        return
    st.caption(
        f"The next {head['forecast_days']} days ({plain(head['forecast_timezone'])}), as the "
        f"engine's own rules would send them from {as_of}, assuming no engagement from then "
        f"on. {plain(head['forecast_summary'], 300)}"
    )
    if ahead.is_empty():
        st.info("The campaign has no email step: it sends nothing.")
        return
    ahead = ahead.with_columns(step_label(pl.col("step_order"), pl.col("step_key")).alias("step"))
    st.altair_chart(charts.sent_and_forecast(sent.select("day", "sent"), ahead))
    table = ahead.pivot(
        "step", index="day", values="messages", aggregate_function="sum", sort_columns=False
    )
    table = table.with_columns(pl.sum_horizontal(pl.exclude("day")).alias("total"))
    st.dataframe(
        table,
        hide_index=True,
        placeholder=ui.MISSING,
        column_config={
            "day": st.column_config.DateColumn("Day", format="ddd YYYY-MM-DD"),
            "total": st.column_config.NumberColumn("Total", format="localized"),
        },
    )
    ui.download(table, f"forecast-{name}", key="forecast")
    for note in head["forecast_notes"] or ():
        st.caption(plain(note, 300))


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
    placeholder=ui.MISSING,
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
send_forecast(view.tenant_id, picked, names[picked], trend)
if settings is not None:
    st.subheader("Settings")
    st.dataframe(ui.settings_table(settings), hide_index=True, width="content")
operators_corner(view.tenant_id, picked, names[picked])
