"""Data access for the dashboards: read-only, marts only, parameterized SQL.

Connects as the analytics role, which can read the marts of every tenant; the tenant filter
is a bound parameter of each query, never text pasted into SQL.
"""

from __future__ import annotations

from datetime import date

import polars as pl
import sqlalchemy as sa
import streamlit as st
from sqlalchemy.exc import ProgrammingError

from engine.config import Settings
from engine.db import Database

MARTS = "analytics_marts"

TENANTS = sa.text(f"select distinct tenant_name from {MARTS}.campaign_daily order by tenant_name")

CAMPAIGN_DAILY = sa.text(
    f"""
    select day, campaign_name, sent_count, bounced_count, failed_count, unknown_count,
           pending_count, bounce_rate
    from {MARTS}.campaign_daily
    where tenant_name = :tenant and day between :start and :end
    order by day, campaign_name
    """
)


class MartsMissingError(RuntimeError):
    """dbt has not built the marts yet in this database."""


@st.cache_resource
def _engine() -> sa.Engine:
    return Database(Settings.from_env()).analytics


def _read(query: sa.TextClause, **params: object) -> pl.DataFrame:
    try:
        with _engine().connect() as conn:
            result = conn.execute(query, params)
            return pl.DataFrame(
                [dict(row._mapping) for row in result], schema=list(result.keys()), orient="row"
            )
    except ProgrammingError as exc:
        if "does not exist" in str(exc.orig):
            raise MartsMissingError(
                "The analytics marts have not been built yet: run `analytics_job` in the "
                "Dagster UI (or `dbt build`)."
            ) from None
        raise


@st.cache_data(ttl=60, show_spinner=False)
def tenants() -> list[str]:
    return _read(TENANTS)["tenant_name"].to_list()


@st.cache_data(ttl=60, show_spinner=False)
def campaign_daily(tenant: str, start: date, end: date) -> pl.DataFrame:
    return _read(CAMPAIGN_DAILY, tenant=tenant, start=start, end=end)
