"""Stored send forecasts: every campaign's forecast, simulated once per analytics run.

`refresh_forecasts(conn, now)` runs the engine's own forecast (`engine.sequence.forecast`) for
each campaign of the connection's tenant and replaces what `app.send_forecasts` and
`app.send_forecast_days` held for it (migration 0017); dbt builds the marts
`campaign_forecasts` and `campaign_forecast_daily` from them, and a campaign's dashboard page
reads those, as fast as any mart, instead of simulating while the analyst waits.

A refresh may keep a recent forecast instead of simulating again (`every`, the setting
`PENGUIN_FORECAST_INTERVAL` in an analytics run): one made less than `every` ago, on the
campaign's same local day, with the same number of days, while what defines the campaign's
sending is as it was then: the `updated_at` of the campaign, its settings, its list and each
of its sender accounts (a pause, a resume, a campaign file applied, an upload to the list, a
sender paused) are those stored with the forecast (`inputs_fingerprint`, migration 0018: the
rows' own stamps, so the clocks of the hosts that wrote them do not matter). The engine's
passes are five minutes apart, so a five-minute-old forecast is nearly as current as the
next pass; the sends, engagement and step moves since show in the next forecast. The
simulation of a large campaign takes seconds (it plays every pass to the last message, up to
a year ahead), and the freshness sensor starts a run as often as every 30 seconds while a
campaign sends. A kept forecast is marked (`kept_at`): the sensor starts one more run once it
is `every` old, so the last changes before a quiet spell reach the forecast too.

A campaign that cannot be forecast (a definition the engine could not run, data the
simulation trips on) keeps a row that says why, and the others go on: each campaign is
written in its own savepoint.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from engine.db import tenant_transaction
from engine.sequence import rules
from engine.sequence.forecast import Forecast, ForecastError, forecast
from engine.tenants import all_tenants
from engine.text import shown

#: Days a stored forecast covers, from the campaign's local today (the dashboards' window).
FORECAST_DAYS = 14

log = logging.getLogger(__name__)

# Each campaign, a fingerprint of what defines its sending (the stamps of the campaign, its
# settings, its list and each of its sender accounts), and its stored forecast.
_CAMPAIGNS = sa.text(
    """
    select c.id, c.name, c.timezone,
           md5(concat_ws('|', c.updated_at, s.updated_at, l.updated_at, (
               select string_agg(a.id || '@' || a.updated_at, ',' order by a.id)
               from app.sender_accounts a
               where a.id in (
                   select cs.sender_account_id from app.campaign_senders cs
                   where cs.campaign_id = c.id
                   union
                   select st.sender_account_id from app.campaign_steps st
                   where st.campaign_id = c.id
               )
           ))) as inputs_fingerprint,
           f.forecast_at, f.timezone as forecast_timezone, f.days as forecast_days,
           f.inputs_fingerprint as forecast_inputs_fingerprint
    from app.campaigns c
    left join app.campaign_settings s on s.campaign_id = c.id
    left join app.contact_lists l on l.id = c.list_id
    left join app.send_forecasts f on f.campaign_id = c.id
    order by c.name, c.id
    """
)
_MARK_KEPT = sa.text(
    "update app.send_forecasts set kept_at = :now where campaign_id = any(:campaign_ids)"
)
_FORGET = sa.text("delete from app.send_forecasts where campaign_id = :campaign_id")
_KEEP = sa.text(
    """
    insert into app.send_forecasts
        (tenant_id, campaign_id, forecast_at, inputs_fingerprint, timezone, days, last_day,
         later, unfinished, summary, notes, error)
    values (app.current_tenant_id(), :campaign_id, :forecast_at, :inputs_fingerprint, :timezone,
            :days, :last_day, :later, :unfinished, :summary, :notes, :error)
    """
)
_KEEP_DAYS = sa.text(
    """
    insert into app.send_forecast_days (tenant_id, campaign_id, day, step_key, messages)
    values (app.current_tenant_id(), :campaign_id, :day, :step_key, :messages)
    """
)


@dataclass
class ForecastReport:
    """What a refresh stored: campaigns forecast, their messages in the window, and the ones
    that could not be forecast with why (campaign name → reason); `kept`: campaigns whose
    recent forecast was kept (not counted in the others)."""

    campaigns: int = 0
    kept: int = 0
    messages: int = 0
    failed: dict[str, str] = field(default_factory=dict)


def refresh_forecasts(
    conn: Connection,
    now: datetime,
    days: int = FORECAST_DAYS,
    every: timedelta = timedelta(0),
    on_campaign: Callable[[str, Forecast | None], None] | None = None,
) -> ForecastReport:
    """Forecast every campaign of the bound tenant from `now` and store the result, replacing
    the previous one (the caller's transaction commits them together); a forecast younger
    than `every` of an unchanged campaign is kept (see the module's docstring)."""
    report = ForecastReport()
    campaigns = conn.execute(_CAMPAIGNS).all()
    kept = {c.id for c in campaigns if _still_current(c, now, days, every)}
    if kept:
        conn.execute(_MARK_KEPT, {"campaign_ids": list(kept), "now": now})
        report.kept = len(kept)
    for campaign in campaigns:
        if campaign.id in kept:
            continue
        result: Forecast | None = None
        error: str | None = None
        try:
            with conn.begin_nested():
                result = forecast(conn, campaign.id, now, days=days)
        except ForecastError as exc:
            error = str(exc)
        except sa.exc.DBAPIError as exc:
            if exc.connection_invalidated:
                raise
            error = f"the database refused a query: {str(exc.orig).strip().splitlines()[0]}"
        except Exception as exc:  # a simulation bug on one campaign must not stop the others
            log.exception("forecast of campaign %s failed", campaign.id)
            error = f"the simulation failed: {type(exc).__name__}: {exc}"
        with conn.begin_nested():
            _store(conn, campaign, now, days, result, error)
        report.campaigns += 1
        if result is None:
            report.failed[campaign.name] = shown(error or "", 300)
        else:
            report.messages += result.total
        if on_campaign is not None:
            on_campaign(campaign.name, result)
    return report


def refresh_all_tenants(
    app: Engine, now: datetime, every: timedelta = timedelta(0)
) -> dict[str, ForecastReport]:
    """`refresh_forecasts` for every tenant, each in its own transaction (as the application
    role: row-level security keeps each to its tenant); tenant name → its report."""
    reports = {}
    for tenant_id, tenant in all_tenants(app):
        with tenant_transaction(app, tenant_id) as conn:
            reports[tenant] = refresh_forecasts(conn, now, every=every)
    return reports


def _still_current(campaign: sa.Row, now: datetime, days: int, every: timedelta) -> bool:
    """Whether the campaign's stored forecast can stand at `now` (see the module)."""
    made = campaign.forecast_at
    if (
        made is None
        or campaign.forecast_inputs_fingerprint != campaign.inputs_fingerprint
        or campaign.forecast_days != days
        or not now - every < made <= now
    ):
        return False
    tz = rules.campaign_timezone(campaign.forecast_timezone)
    return rules.local_day(made, tz) == rules.local_day(now, tz)


def _store(
    conn: Connection,
    campaign: sa.Row,
    now: datetime,
    days: int,
    result: Forecast | None,
    error: str | None,
) -> None:
    """Replace the campaign's stored forecast (a row of `_CAMPAIGNS`) with `result`, or with
    `error` when it could not be made."""
    campaign_id = campaign.id
    conn.execute(_FORGET, {"campaign_id": campaign_id})
    conn.execute(
        _KEEP,
        {
            "campaign_id": campaign_id,
            "forecast_at": now,
            "inputs_fingerprint": campaign.inputs_fingerprint,
            "timezone": result.timezone if result else campaign.timezone,
            "days": days,
            "last_day": result.last_day if result else None,
            "later": result.later if result else 0,
            "unfinished": result.unfinished if result else 0,
            "summary": result.summary() if result else "This campaign cannot be forecast.",
            "notes": list(result.notes) if result else [],
            "error": error,
        },
    )
    if result is not None and result.steps:
        conn.execute(
            _KEEP_DAYS,
            [
                {
                    "campaign_id": campaign_id,
                    "day": day,
                    "step_key": step,
                    "messages": result.counts.get((day, step), 0),
                }
                for day in result.days
                for step in result.steps
            ],
        )
