"""Stored send forecasts: every campaign's forecast, simulated once per analytics run.

`refresh_forecasts(conn, now)` runs the engine's own forecast (`engine.sequence.forecast`) for
each campaign of the connection's tenant and replaces what `app.send_forecasts` and
`app.send_forecast_days` held for it (migration 0017); dbt builds the marts
`campaign_forecasts` and `campaign_forecast_daily` from them, and a campaign's dashboard page
reads those, as fast as any mart, instead of simulating while the analyst waits.

A campaign that cannot be forecast (a definition the engine could not run, data the
simulation trips on) keeps a row that says why, and the others go on: each campaign is
written in its own savepoint.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from engine.db import tenant_transaction
from engine.sequence.forecast import Forecast, ForecastError, forecast
from engine.tenants import all_tenants
from engine.text import shown

#: Days a stored forecast covers, from the campaign's local today (the dashboards' window).
FORECAST_DAYS = 14

log = logging.getLogger(__name__)

_CAMPAIGNS = sa.text("select id, name, timezone from app.campaigns order by name, id")
_FORGET = sa.text("delete from app.send_forecasts where campaign_id = :campaign_id")
_KEEP = sa.text(
    """
    insert into app.send_forecasts
        (tenant_id, campaign_id, forecast_at, timezone, days, last_day, later, unfinished,
         summary, notes, error)
    values (app.current_tenant_id(), :campaign_id, :forecast_at, :timezone, :days, :last_day,
            :later, :unfinished, :summary, :notes, :error)
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
    that could not be forecast with why (campaign name → reason)."""

    campaigns: int = 0
    messages: int = 0
    failed: dict[str, str] = field(default_factory=dict)


def refresh_forecasts(
    conn: Connection,
    now: datetime,
    days: int = FORECAST_DAYS,
    on_campaign: Callable[[str, Forecast | None], None] | None = None,
) -> ForecastReport:
    """Forecast every campaign of the bound tenant from `now` and store the result, replacing
    the previous one (the caller's transaction commits them together)."""
    report = ForecastReport()
    for campaign in conn.execute(_CAMPAIGNS).all():
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
            _store(conn, campaign.id, campaign.timezone, now, days, result, error)
        report.campaigns += 1
        if result is None:
            report.failed[campaign.name] = shown(error or "", 300)
        else:
            report.messages += result.total
        if on_campaign is not None:
            on_campaign(campaign.name, result)
    return report


def refresh_all_tenants(app: Engine, now: datetime) -> dict[str, ForecastReport]:
    """`refresh_forecasts` for every tenant, each in its own transaction (as the application
    role: row-level security keeps each to its tenant); tenant name → its report."""
    reports = {}
    for tenant_id, tenant in all_tenants(app):
        with tenant_transaction(app, tenant_id) as conn:
            reports[tenant] = refresh_forecasts(conn, now)
    return reports


def _store(
    conn: Connection,
    campaign_id: uuid.UUID,
    timezone: str,
    now: datetime,
    days: int,
    result: Forecast | None,
    error: str | None,
) -> None:
    conn.execute(_FORGET, {"campaign_id": campaign_id})
    conn.execute(
        _KEEP,
        {
            "campaign_id": campaign_id,
            "forecast_at": now,
            "timezone": result.timezone if result else timezone,
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
