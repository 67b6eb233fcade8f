"""The operators' corner of a campaign's page: its live status, pause and resume, through the
engine's own functions (`engine.campaigns`).

The marts are read by `dashboards.data` as `penguin_dashboards`; this module is the only one
that reads `app`, as `penguin_operator` (migrations 0015 and 0017), which may read a campaign
and whether it has senders, and change its status, nothing else, each time in one transaction
bound to the tenant picked in the sidebar: another tenant's campaign id finds nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar

import sqlalchemy as sa
import streamlit as st
from sqlalchemy.engine import Connection

from engine.campaigns import pause_campaign, resume_campaign
from engine.config import Settings
from engine.db import Database, tenant_transaction

_STATUS = sa.text("select status from app.campaigns where id = :id")

T = TypeVar("T")


class OperatorUnavailableError(RuntimeError):
    """The operator role cannot be reached (no password configured, or the server refused)."""


@st.cache_resource
def _engine() -> sa.Engine:
    return Database(Settings.from_env()).operator


def _in_tenant(tenant_id: str, act: Callable[[Connection], T]) -> T:
    try:
        with tenant_transaction(_engine(), uuid.UUID(tenant_id)) as conn:
            return act(conn)
    except sa.exc.OperationalError as exc:
        raise OperatorUnavailableError(
            "The operators' corner cannot reach the database as `penguin_operator`: give the "
            "dashboards its password (PENGUIN_OPERATOR_PASSWORD, set at `penguin db upgrade`)."
            f" The server said: {str(exc.orig).strip().splitlines()[0]}"
        ) from None


def live_status(tenant_id: str, campaign_id: str) -> str | None:
    """The campaign's status now (the marts' may be a build behind); None if the tenant has no
    such campaign."""
    return _in_tenant(
        tenant_id, lambda conn: conn.execute(_STATUS, {"id": uuid.UUID(campaign_id)}).scalar()
    )


def pause(tenant_id: str, campaign_id: str) -> str:
    """Pause the campaign (`engine.campaigns.pause_campaign`); its new status. Raises
    CampaignError when it cannot be paused, naming why."""
    return _change(tenant_id, campaign_id, pause_campaign)


def resume(tenant_id: str, campaign_id: str) -> str:
    """Resume the campaign (`engine.campaigns.resume_campaign`); its new status."""
    return _change(tenant_id, campaign_id, resume_campaign)


def _change(
    tenant_id: str, campaign_id: str, act: Callable[[Connection, uuid.UUID, datetime], str]
) -> str:
    status = _in_tenant(
        tenant_id, lambda conn: act(conn, uuid.UUID(campaign_id), datetime.now(UTC))
    )
    return status
