"""Data access for the dashboards: read-only, marts only, parameterized SQL.

Connects as the dashboards role, which may only read the marts (`analytics_marts`), in
read-only transactions; the tenant filter is a bound parameter of each query, never text
pasted into SQL.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

import polars as pl
import sqlalchemy as sa
import streamlit as st
from sqlalchemy.exc import ProgrammingError

from dashboards.ui import csv_text
from engine.config import Settings
from engine.db import Database

MARTS = "analytics_marts"

CAMPAIGN_DAILY = sa.text(
    f"""
    select send_date as day, campaign_name, sent, delivered, bounced_hard, bounced_soft,
           failed, unknown, pending, unique_opens, unique_clicks, replies,
           bounce_rate::float8 as bounce_rate, open_rate::float8 as open_rate,
           click_rate::float8 as click_rate
    from {MARTS}.campaign_daily
    where tenant_name = :tenant and send_date between :start and :end
    order by send_date, campaign_name
    """
)

# What the marts hold: the newest change of a message or event they include, and when dbt built
# them (a page says "data as of" from this, not from the clock).
DATA_AS_OF = sa.text(
    f"""
    select greatest(max(updated_at), max(last_event_recorded_at)) as data_until,
           max(loaded_at) as built_at
    from {MARTS}.fct_sends
    """
)

UPLOAD_BATCHES = sa.text(
    f"""
    select upload_batch_id::text as upload_batch_id, file_name, list_name, upload_source,
           upload_status, upload_error,
           total_rows, inserted_count, updated_count, unchanged_count, duplicate_count,
           rejected_count, suppressed_count, role_address_count, list_added_count,
           file_encoding, file_delimiter, column_mapping, created_at,
           duration_seconds::float8 as duration_seconds
    from {MARTS}.fct_upload_batches
    where tenant_name = :tenant
      and (created_at at time zone 'UTC')::date between :start and :end
    order by created_at desc
    limit :limit
    """
)

UPLOAD_LISTS = sa.text(
    f"""
    select distinct list_name from {MARTS}.fct_upload_batches
    where tenant_name = :tenant and list_name is not null
    order by list_name
    """
)

UPLOAD_REJECTS = sa.text(
    f"""
    select line_number, reject_reason as reason, raw_row
    from {MARTS}.fct_upload_rejects
    where tenant_name = :tenant and upload_batch_id = :batch_id
    order by line_number
    limit :limit
    """
)


# -- the analytics pages' filters (dashboards/filters.py) ---------------------------------------

TENANT_CHOICES = sa.text(
    f"select tenant_id::text as tenant_id, tenant_name from {MARTS}.dim_tenants order by 2"
)
LAST_ACTIVE_TENANT = sa.text(
    f"""
    select tenant_name from {MARTS}.tenant_daily where sent > 0
    group by tenant_name order by max(send_date) desc, tenant_name limit 1
    """
)
CAMPAIGN_CHOICES = sa.text(
    f"""
    select campaign_id::text as campaign_id, campaign_name from {MARTS}.dim_campaigns
    where tenant_id = cast(:tenant_id as uuid) order by campaign_name, created_at
    """
)
SENDER_CHOICES = sa.text(
    f"""
    select sender_account_id::text as sender_account_id, sender_email from {MARTS}.dim_senders
    where tenant_id = cast(:tenant_id as uuid) order by sender_email
    """
)

#: The filters as a predicate on a daily mart with campaign_id and sender_account_id (the
#: tenant and the days use the marts' (tenant_id, send_date) index; empty lists mean "all").
FILTERED = """
    tenant_id = cast(:tenant_id as uuid)
    and send_date between :start and :end
    and (cardinality(cast(:campaign_ids as uuid[])) = 0
         or campaign_id = any(cast(:campaign_ids as uuid[])))
    and (cardinality(cast(:sender_ids as uuid[])) = 0
         or sender_account_id = any(cast(:sender_ids as uuid[])))
"""

#: The counts of a group of daily rows, summed (0 when there are none).
COUNTS = """
    coalesce(sum(sent), 0)::bigint as sent,
    coalesce(sum(delivered), 0)::bigint as delivered,
    coalesce(sum(bounced_hard), 0)::bigint as bounced_hard,
    coalesce(sum(bounced_soft), 0)::bigint as bounced_soft,
    coalesce(sum(unique_opens), 0)::bigint as unique_opens,
    coalesce(sum(unique_clicks), 0)::bigint as unique_clicks,
    coalesce(sum(replies), 0)::bigint as replies,
    coalesce(sum(unsubscribes), 0)::bigint as unsubscribes,
    coalesce(sum(complaints), 0)::bigint as complaints,
    coalesce(sum(machine_opens), 0)::bigint as machine_opens,
    coalesce(sum(total_opens), 0)::bigint as total_opens
"""

#: The rates of `counts` (rows of COUNTS), joined beside them: the marts' function, whose one
#: definition the daily marts render too (dbt_project/macros/metric_rates.sql). No page divides
#: counts itself.
RATES = f"""
    cross join lateral {MARTS}.metric_rates(
        counts.sent, counts.delivered, counts.bounced_hard, counts.bounced_soft,
        counts.unique_opens, counts.unique_clicks, counts.replies, counts.unsubscribes,
        counts.complaints, counts.machine_opens, counts.total_opens
    ) as rates
"""


def _metrics(grouped: str) -> str:
    """`grouped` (a select of COUNTS and its group's columns) with the rates of each row."""
    return f"select counts.*, rates.* from ({grouped}) as counts {RATES}"


TOTALS = sa.text(_metrics(f"select {COUNTS} from {MARTS}.campaign_sender_daily where {FILTERED}"))
DAILY = sa.text(
    _metrics(
        f"""
        select send_date as day, {COUNTS}
        from {MARTS}.campaign_sender_daily where {FILTERED}
        group by send_date
        """
    )
    + " order by day"
)
PER_CAMPAIGN = sa.text(
    _metrics(
        f"""
        select campaign_id::text as campaign_id, max(campaign_name) as campaign_name, {COUNTS}
        from {MARTS}.campaign_sender_daily where {FILTERED}
        group by campaign_id
        """
    )
)


#: The Sends page's headline figures: the tenant's messages sent start..end, with their rates.
CAMPAIGN_DAILY_TOTALS = sa.text(
    _metrics(
        f"""
        select {COUNTS} from {MARTS}.campaign_daily
        where tenant_name = :tenant and send_date between :start and :end
        """
    )
)


_CAMPAIGN_PERIOD = _metrics(
    f"""
    select campaign_id as period_campaign_id, {COUNTS}
    from {MARTS}.campaign_sender_daily where {FILTERED}
    group by campaign_id
    """
)
CAMPAIGNS = sa.text(
    f"""
    with period as ({_CAMPAIGN_PERIOD})
    select campaigns.campaign_id::text as campaign_id, campaigns.campaign_name,
           campaigns.campaign_status, campaigns.launched_at, campaigns.completed_at,
           campaigns.steps, campaigns.daily_limit, period.*
    from {MARTS}.dim_campaigns as campaigns
    left join period on period.period_campaign_id = campaigns.campaign_id
    where campaigns.tenant_id = cast(:tenant_id as uuid)
        and (cardinality(cast(:campaign_ids as uuid[])) = 0
             or campaigns.campaign_id = any(cast(:campaign_ids as uuid[])))
    order by campaigns.created_at desc, campaigns.campaign_name
    """
)
STEP_FUNNEL = sa.text(
    f"""
    select step_key, step_name, step_order, step_type, has_variants, is_removed, yes_step_key,
           no_step_key, enrolled, reached, reached_share as of_enrolled, moved_on,
           moved_on_share as went_on, completed, exited, took_yes, took_no, standing, sent,
           delivered, opened, open_rate, clicked, click_rate, replied, reply_rate
    from {MARTS}.step_funnel
    where tenant_id = cast(:tenant_id as uuid) and campaign_id = cast(:campaign_id as uuid)
      and (not is_removed or reached > 0)
    order by step_order nulls last, step_key
    """
)
STEP_EXITS = sa.text(
    f"""
    select step_key, step_order, exit_reason, exited
    from {MARTS}.step_exits
    where tenant_id = cast(:tenant_id as uuid) and campaign_id = cast(:campaign_id as uuid)
    order by step_order nulls last, exited desc, exit_reason
    """
)
STEP_VARIANTS = sa.text(
    _metrics(
        f"""
        select step_key, min(step_order) as step_order, variant, {COUNTS}
        from {MARTS}.step_variant_daily
        where tenant_id = cast(:tenant_id as uuid) and send_date between :start and :end
          and campaign_id = cast(:campaign_id as uuid) and variant is not null
        group by step_key, variant
        """
    )
    + " order by step_order, step_key, variant"
)
CAMPAIGN_SETTINGS = sa.text(
    f"""
    select campaign_name, campaign_status, campaign_timezone, created_at, launched_at,
           completed_at, send_window_start, send_window_end, send_days, daily_limit,
           stop_on_reply, track_opens, track_clicks, steps, email_steps
    from {MARTS}.dim_campaigns
    where tenant_id = cast(:tenant_id as uuid) and campaign_id = cast(:campaign_id as uuid)
    """
)

#: The campaign's stored forecast (the last analytics run's simulation) and its days.
CAMPAIGN_FORECAST = sa.text(
    f"""
    select forecast_at, forecast_timezone, forecast_days, forecast_messages, last_message_day,
           messages_later, enrollments_unfinished, forecast_summary, forecast_notes,
           forecast_error
    from {MARTS}.campaign_forecasts
    where tenant_id = cast(:tenant_id as uuid) and campaign_id = cast(:campaign_id as uuid)
    """
)
CAMPAIGN_FORECAST_DAILY = sa.text(
    f"""
    select forecast_day as day, step_key, step_order, messages
    from {MARTS}.campaign_forecast_daily
    where tenant_id = cast(:tenant_id as uuid) and campaign_id = cast(:campaign_id as uuid)
    order by forecast_day, step_order nulls last, step_key
    """
)

_SENDER_PERIOD = _metrics(
    f"select sender_account_id as period_sender_id, {COUNTS} from filtered "
    "group by sender_account_id"
)
#: Each sender's volume against its daily limit, bounce and reply rates (the campaign filter
#: applies through campaign_sender_daily).
SENDERS = sa.text(
    f"""
    with filtered as materialized (
        select * from {MARTS}.campaign_sender_daily where {FILTERED}
    ),
    per_day as (
        select sender_account_id, send_date, sum(sent) as sent
        from filtered group by sender_account_id, send_date
    ),
    period as ({_SENDER_PERIOD}),
    peaks as (
        select sender_account_id as peak_sender_id,
               max(sent)::bigint as busiest_day_sent,
               coalesce(max(sent) filter (where send_date = :end), 0)::bigint as last_day_sent
        from per_day group by sender_account_id
    )
    select senders.sender_account_id::text as sender_account_id, senders.sender_email,
           senders.is_active, senders.daily_limit,
           coalesce(peaks.last_day_sent, 0) as last_day_sent,
           coalesce(peaks.busiest_day_sent, 0) as busiest_day_sent,
           peaks.busiest_day_sent::float8 / nullif(senders.daily_limit, 0) as busiest_day_share,
           period.*
    from {MARTS}.dim_senders as senders
    left join period on period.period_sender_id = senders.sender_account_id
    left join peaks on peaks.peak_sender_id = senders.sender_account_id
    where senders.tenant_id = cast(:tenant_id as uuid)
        and (cardinality(cast(:sender_ids as uuid[])) = 0
             or senders.sender_account_id = any(cast(:sender_ids as uuid[])))
    order by senders.sender_email
    """
)


#: The recipient domains with the most messages in the period (recipient_domain_daily has no
#: campaign or sender: those filters do not apply to it).
DOMAINS = sa.text(
    _metrics(
        f"""
        select recipient_domain, {COUNTS}
        from {MARTS}.recipient_domain_daily
        where tenant_id = cast(:tenant_id as uuid) and send_date between :start and :end
        group by recipient_domain
        order by sum(sent) desc, recipient_domain
        limit :limit
        """
    )
    + " order by sent desc, recipient_domain"
)


LIST_GROWTH = sa.text(
    f"""
    select list_name, added_date as day, members_added::bigint as members_added
    from {MARTS}.list_members_daily
    where tenant_id = cast(:tenant_id as uuid) and added_date <= :end
    order by list_name, added_date
    """
)
#: The engagement score's distribution in bands of ten (100 alone), active contacts only.
SCORE_BANDS = sa.text(
    f"""
    select least(engagement_score / 10 * 10, 100) as band, count(*)::bigint as contacts
    from {MARTS}.dim_contacts
    where tenant_id = cast(:tenant_id as uuid) and contact_status = 'active'
    group by 1 order by 1
    """
)
CONTACT_STATUSES = sa.text(
    f"""
    select contact_status, count(*)::bigint as contacts from {MARTS}.dim_contacts
    where tenant_id = cast(:tenant_id as uuid) group by 1 order by 2 desc
    """
)
#: The most engaged contacts (the leads), by the (tenant_id, engagement_score) index.
LEADS = sa.text(
    f"""
    select email, first_name, last_name, company, job_title, engagement_score,
           messages_sent, messages_opened, messages_clicked, messages_replied,
           last_open_at, last_click_at, last_reply_at, lists
    from {MARTS}.dim_contacts
    where tenant_id = cast(:tenant_id as uuid) and engagement_score > 0
    order by engagement_score desc, last_reply_at desc nulls last, email
    limit :limit
    """
)
SUPPRESSIONS = sa.text(
    f"""
    select suppression_reason as reason, count(*)::bigint as suppressions
    from {MARTS}.fct_suppressions
    where tenant_id = cast(:tenant_id as uuid) and suppressed_date between :start and :end
    group by 1 order by 2 desc, 1
    """
)


class MartsMissingError(RuntimeError):
    """dbt has not built the marts yet in this database."""


@st.cache_resource
def _engine() -> sa.Engine:
    return Database(Settings.from_env()).dashboards


#: PostgreSQL type OIDs the marts' queries return, as polars types (anything else reads as text).
_POLARS_TYPES: dict[int, pl.DataType] = {
    16: pl.Boolean(),
    20: pl.Int64(),
    21: pl.Int64(),
    23: pl.Int64(),
    700: pl.Float64(),
    701: pl.Float64(),
    1700: pl.Float64(),
    1082: pl.Date(),
    1114: pl.Datetime("us"),
    1184: pl.Datetime("us", "UTC"),
}


def _read(query: sa.TextClause, **params: object) -> pl.DataFrame:
    try:
        with _engine().connect() as conn:
            result = conn.execute(query, params)
            description = result.cursor.description  # gone once the rows are read
            rows = [dict(row._mapping) for row in result]
            if rows:
                return pl.DataFrame(rows, schema=list(result.keys()), orient="row")
            # No rows: take the columns' types from the result's description, so an empty
            # frame still joins and computes with a full one (all-Null columns would not).
            return pl.DataFrame(
                schema={
                    column.name: _POLARS_TYPES.get(column.type_code, pl.String)
                    for column in description
                }
            )
    except ProgrammingError as exc:
        if "does not exist" in str(exc.orig):
            raise MartsMissingError(
                "The analytics marts have not been built yet: run `analytics_job` in the "
                "Dagster UI (or `dbt build`)."
            ) from None
        raise


@st.cache_data(ttl=60, show_spinner=False)
def tenant_choices() -> dict[str, str]:
    """{tenant name: tenant id} of every tenant."""
    return dict(_read(TENANT_CHOICES).select("tenant_name", "tenant_id").iter_rows())


@st.cache_data(ttl=60, show_spinner=False)
def last_active_tenant() -> str | None:
    """The tenant that sent last: the one the tenant picker opens on."""
    names = _read(LAST_ACTIVE_TENANT)["tenant_name"].to_list()
    return names[0] if names else None


@st.cache_data(ttl=60, show_spinner=False)
def campaign_choices(tenant_id: str) -> dict[str, str]:
    """{campaign id: name} of the tenant's campaigns."""
    return dict(_read(CAMPAIGN_CHOICES, tenant_id=tenant_id).iter_rows())


@st.cache_data(ttl=60, show_spinner=False)
def sender_choices(tenant_id: str) -> dict[str, str]:
    """{sender account id: address} of the tenant's senders."""
    return dict(_read(SENDER_CHOICES, tenant_id=tenant_id).iter_rows())


@st.cache_data(ttl=60, show_spinner=False)
def totals(params: dict) -> dict[str, float | int | None]:
    """The metrics of the filtered messages (`Filters.params()`), one mapping."""
    return _read(TOTALS, **params).row(0, named=True)


@st.cache_data(ttl=60, show_spinner=False)
def daily(params: dict) -> pl.DataFrame:
    """The metrics per send day of the filtered messages."""
    return _read(DAILY, **params)


@st.cache_data(ttl=60, show_spinner=False)
def per_campaign(params: dict) -> pl.DataFrame:
    """The metrics per campaign of the filtered messages."""
    return _read(PER_CAMPAIGN, **params)


@st.cache_data(ttl=60, show_spinner=False)
def campaigns(params: dict) -> pl.DataFrame:
    """The tenant's campaigns (those filtered, if any) with their status, dates and the
    metrics of their filtered messages in the period (nulls where none)."""
    return _read(CAMPAIGNS, **params).drop("period_campaign_id")


@st.cache_data(ttl=60, show_spinner=False)
def campaign_settings(tenant_id: str, campaign_id: str) -> dict | None:
    """One campaign's settings (None if the tenant has no such campaign)."""
    frame = _read(CAMPAIGN_SETTINGS, tenant_id=tenant_id, campaign_id=campaign_id)
    return frame.row(0, named=True) if frame.height else None


@st.cache_data(ttl=60, show_spinner=False)
def campaign_forecast(tenant_id: str, campaign_id: str) -> tuple[dict | None, pl.DataFrame]:
    """The campaign's stored send forecast (None before the first analytics run that made one)
    and its messages per local day and email step (`day`, `step_key`, `step_order`,
    `messages`)."""
    params = {"tenant_id": tenant_id, "campaign_id": campaign_id}
    head = _read(CAMPAIGN_FORECAST, **params)
    days = _read(CAMPAIGN_FORECAST_DAILY, **params)
    return (head.row(0, named=True) if head.height else None), days


@st.cache_data(ttl=60, show_spinner=False)
def step_funnel(tenant_id: str, campaign_id: str) -> pl.DataFrame:
    """The campaign's steps in order, with what reached, left and passed each (step_funnel)."""
    return _read(STEP_FUNNEL, tenant_id=tenant_id, campaign_id=campaign_id)


@st.cache_data(ttl=60, show_spinner=False)
def step_exits(tenant_id: str, campaign_id: str) -> pl.DataFrame:
    """Enrollments that left each step early, by reason."""
    return _read(STEP_EXITS, tenant_id=tenant_id, campaign_id=campaign_id)


@st.cache_data(ttl=60, show_spinner=False)
def step_variants(tenant_id: str, campaign_id: str, start: date, end: date) -> pl.DataFrame:
    """The metrics of each A/B variant of the campaign's email steps, sent start..end."""
    params = {"tenant_id": tenant_id, "campaign_id": campaign_id, "start": start, "end": end}
    return _read(STEP_VARIANTS, **params)


@st.cache_data(ttl=60, show_spinner=False)
def senders(params: dict) -> pl.DataFrame:
    """The tenant's sender accounts (those filtered, if any): limit, volume, rates."""
    return _read(SENDERS, **params).drop("period_sender_id")


@st.cache_data(ttl=60, show_spinner=False)
def domains(tenant_id: str, start: date, end: date, limit: int = 25) -> pl.DataFrame:
    """The recipient domains with the most messages sent between `start` and `end`."""
    return _read(DOMAINS, tenant_id=tenant_id, start=start, end=end, limit=limit)


@st.cache_data(ttl=60, show_spinner=False)
def list_growth(tenant_id: str, end: date) -> pl.DataFrame:
    """Members added per list and day up to `end`."""
    return _read(LIST_GROWTH, tenant_id=tenant_id, end=end)


@st.cache_data(ttl=60, show_spinner=False)
def score_bands(tenant_id: str) -> pl.DataFrame:
    return _read(SCORE_BANDS, tenant_id=tenant_id)


@st.cache_data(ttl=60, show_spinner=False)
def contact_statuses(tenant_id: str) -> pl.DataFrame:
    return _read(CONTACT_STATUSES, tenant_id=tenant_id)


@st.cache_data(ttl=60, show_spinner=False)
def leads(tenant_id: str, limit: int = 100) -> pl.DataFrame:
    return _read(LEADS, tenant_id=tenant_id, limit=limit)


@st.cache_data(ttl=60, show_spinner=False)
def suppressions(tenant_id: str, start: date, end: date) -> pl.DataFrame:
    return _read(SUPPRESSIONS, tenant_id=tenant_id, start=start, end=end)


@st.cache_data(ttl=60, show_spinner=False)
def campaign_daily(tenant: str, start: date, end: date) -> pl.DataFrame:
    return _read(CAMPAIGN_DAILY, tenant=tenant, start=start, end=end)


@st.cache_data(ttl=60, show_spinner=False)
def campaign_daily_totals(tenant: str, start: date, end: date) -> dict[str, float | int | None]:
    """The metrics of the tenant's messages sent `start`..`end`, one mapping."""
    return _read(CAMPAIGN_DAILY_TOTALS, tenant=tenant, start=start, end=end).row(0, named=True)


@st.cache_data(ttl=60, show_spinner=False)
def data_as_of() -> tuple[datetime | None, datetime | None]:
    """(the newest change the marts include, when they were built); Nones when empty."""
    row = _read(DATA_AS_OF).row(0)
    return row[0], row[1]


def data_as_of_caption() -> str:
    return as_of_caption(*data_as_of(), now=datetime.now(UTC))


def as_of_caption(until: datetime | None, built: datetime | None, now: datetime) -> str:
    """ "Data as of": the newest change the marts include, never later than `now`. A writer may
    stamp its rows ahead of the clock (`penguin send --now <tomorrow>`, a host whose clock is
    fast); the marts then hold everything committed up to the moment they were built, which
    is what the caption means, so a stamp in the future reads as the build's time (or now)."""
    if until is None:
        return "No messages in the marts yet."

    def utc(moment: datetime) -> datetime:
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)

    built_at = min(utc(built or now), utc(now))
    return (
        f"Data as of {min(utc(until), built_at):%Y-%m-%d %H:%M} UTC: the newest send or event "
        f"the marts include (built at {built_at:%H:%M} UTC; they refresh within a minute or so "
        "of new sends and events)."
    )


def live_caption() -> str:
    """ "Data as of" for the marts that are views (the upload batches): the moment read."""
    return (
        f"Data as of {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC: upload batches are read live "
        "(views over the database)."
    )


def upload_batches(tenant: str, start: date, end: date, limit: int = 50) -> pl.DataFrame:
    """The tenant's latest upload batches made on the (UTC) days `start`..`end`, newest first;
    not cached, the page follows them."""
    return _read(UPLOAD_BATCHES, tenant=tenant, start=start, end=end, limit=limit)


def upload_lists(tenant: str) -> list[str]:
    return _read(UPLOAD_LISTS, tenant=tenant)["list_name"].to_list()


def upload_rejects(tenant: str, batch_id: str, limit: int | None = None) -> pl.DataFrame:
    """The batch's rejected lines in file order (all of them unless `limit`)."""
    return _read(UPLOAD_REJECTS, tenant=tenant, batch_id=batch_id, limit=limit)


def upload_rejects_csv(tenant: str, batch_id: str) -> str:
    """The batch's rejects as the page's download has them (`ui.csv_text`)."""
    return csv_text(upload_rejects(tenant, batch_id))
