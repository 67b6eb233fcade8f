"""Analytics: the dbt project as Dagster assets, kept fresh by a sensor on the source tables.

Two asset definitions over one dbt project, each one `dbt build` when it runs:

* `analytics_daily`: the models tagged `partitioned`: the facts and the per-day models,
  partitioned by reporting day (`ANALYTICS_DAYS`), and the staging views they read (views: a
  build for any day range is the same view). A partition range becomes one `dbt build` with
  the vars `start_date` and `end_date`, which rebuild exactly those days from the raw tables:
  a backfill from the UI, the nightly repair.
* `analytics_models`: everything else (the dimensions, the upload marts, the forecasts' views
  and marts), unpartitioned and downstream of the first and of the forecasts: it runs last.

Between them, `send_forecasts` stores each campaign's send forecast (`engine.forecasts`, the
engine's own simulation) in the two app tables dbt reads as sources of the marts
`campaign_forecasts` and `campaign_forecast_daily` (in `analytics_models`), so a campaign's
page reads its forecast like any mart. The daily models do not read them and go first (a step
priority): a run's new sends and events reach the marts without waiting for the simulations.
A forecast less than `PENGUIN_FORECAST_INTERVAL` (5 minutes) old, of a campaign unchanged
since, is kept, not simulated again; the asset's config `every_campaign` forecasts them all.

`analytics_freshness_sensor` watches `sent_emails`, `email_events`, `step_transitions`,
`campaigns` and `sender_accounts` in commit order: their `change_xid`, the transaction that
last wrote each row (migration 0020), against the snapshot its previous tick read them in, so
a row counts whatever time its writer put on it (the large tables' `change_xid` is indexed: a
tick reads only the new rows). When there are new rows it asks for one run of `analytics_job`
over the range of reporting days they touch, tagged as a refresh: dbt then builds
incrementally, in the same commit order (dbt_project/macros/change_order.sql), merging only
the messages and events that changed and rebuilding only the days they belong to. So a send,
an event, a move through a wait or a condition, a campaign or a sender paused or edited reaches
the marts (and the forecasts) one sensor interval plus one build after it is committed, whatever
wrote it (a send run, the tracking server, a mailbox poll, an import, the generator, the CLI,
the operators' corner) and whatever its clock said. An upload run refreshes the marts itself,
in the same run. The sensor also asks, once, for a run when a forecast a run kept is
`PENGUIN_FORECAST_INTERVAL` old.

All dbt builds share the pool `dbt` (limit 1 in the instance `penguin up` writes) and the run
tag `DBT_TAGS`, because two at once fail with "relation already exists".
"""

import json
import os
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import dagster as dg
import sqlalchemy as sa
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    PRIORITY_TAG,
)
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, DbtProject, dbt_assets
from pydantic import Field

from engine import dbt_manifest
from engine.config import DBT_PROJECT_DIR, Settings
from engine.dbt_manifest import BUILD
from engine.forecasts import FORECAST_DAYS, refresh_all_tenants
from orchestration.clock import utcnow
from orchestration.resources import PostgresResource

DBT_EXECUTABLE = dbt_manifest.dbt_executable()
#: The pool of every dbt build (see the module docstring).
DBT_POOL = "dbt"
#: The dbt models (all keyed under `analytics/`).
MARTS = dg.AssetSelection.key_prefixes("analytics")
#: The stored forecasts, dbt sources of the forecast marts (keyed by table name, as sources are).
FORECASTS = ("send_forecasts", "send_forecast_days")
#: What a run that refreshes the analytics builds: the forecasts, then the marts.
ANALYTICS = MARTS | dg.AssetSelection.assets(*FORECASTS)
#: Run tag of every job that builds the marts: the run queue starts one such run at a time
#: (`tag_concurrency_limits` in the instance `penguin up` writes). The pool alone let two
#: runs submitted at once start together on a fresh instance; it still covers materializations
#: started by hand, which carry no job tags.
DBT_TAGS = {"penguin/dbt": "build"}
#: Run tag of a refresh the sensor asked for: dbt builds what changed since its last build
#: (the partition range only records which days that touched), not the whole range.
REFRESH_TAG = "penguin/analytics"
#: The dbt tag of the models built per partition range (dbt_project.yml, the models' configs).
PARTITIONED_TAG = "partitioned"

#: One partition per reporting day. A day is a label (`send_date`, `event_date`), the same for
#: every tenant, each in its own time zone; the partitions' own zone is the earliest in the
#: world (UTC+14), so the newest partition is the newest day any tenant can be in.
EARLIEST_ZONE = "Etc/GMT-14"  # POSIX signs: UTC+14
ANALYTICS_DAYS = dg.DailyPartitionsDefinition(
    start_date="2025-01-01", timezone=EARLIEST_ZONE, end_offset=1
)

dbt_project = DbtProject(project_dir=DBT_PROJECT_DIR)

# `penguin up` parses before Dagster starts, so its processes find the manifest fresh and skip
# this. Only a process that finds it missing or older than the project's files (a fresh clone,
# a pull, a model edited under `dagster dev` by hand) parses, once, under a lock.
if dbt_manifest.is_stale() and not dbt_manifest.parse(os.environ):
    raise RuntimeError(
        f"`dbt parse` of {DBT_PROJECT_DIR} failed; run it by hand to see why: "
        f"cd {DBT_PROJECT_DIR} && dbt parse --profiles-dir ."
    )


class PenguinDbtTranslator(DagsterDbtTranslator):
    """Sources keep their table name as key (`sent_emails` is the sending asset); models
    live under `analytics/`."""

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> dg.AssetKey:
        if dbt_resource_props["resource_type"] == "source":
            return dg.AssetKey(dbt_resource_props["name"])
        return dg.AssetKey(["analytics", dbt_resource_props["name"]])

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        return "analytics"


def build_args(context: dg.AssetExecutionContext) -> list[str]:
    """`dbt build` of the daily models: incremental for a refresh, else the partitions' days."""
    if context.run.tags.get(REFRESH_TAG) == "refresh":
        return BUILD
    days = context.partition_key_range
    return [*BUILD, "--vars", json.dumps({"start_date": days.start, "end_date": days.end})]


class ForecastConfig(dg.Config):
    """Launchpad config of `send_forecasts`."""

    every_campaign: bool = Field(
        default=False,
        description=(
            "Forecast every campaign now, even one forecast less than PENGUIN_FORECAST_INTERVAL "
            "ago and unchanged since."
        ),
    )


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            "send_forecasts",
            deps=["sent_emails"],
            group_name="analytics",
            kinds={"python", "postgres"},
            description=(
                f"Each campaign's send forecast for the next {FORECAST_DAYS} days: the "
                "engine's own simulation of its passes, assuming no engagement from now on."
            ),
        ),
        dg.AssetSpec(
            "send_forecast_days",
            deps=["sent_emails"],
            group_name="analytics",
            kinds={"postgres"},
            description="The forecasts' messages per campaign-local day and email step.",
        ),
    ],
)
def send_forecasts(
    context: dg.AssetExecutionContext, config: ForecastConfig, postgres: PostgresResource
):
    """Forecast every campaign of every tenant, each tenant's in one transaction; a campaign
    that cannot be forecast stores why, and the others go on. One forecast less than
    `PENGUIN_FORECAST_INTERVAL` old, of a campaign unchanged since, is kept."""
    now = utcnow()
    every = timedelta(seconds=0 if config.every_campaign else Settings.from_env().forecast_interval)
    campaigns, kept, messages, failed = 0, 0, 0, {}
    for tenant, report in refresh_all_tenants(postgres.db.app, now, every).items():
        context.log.info(
            f"{tenant}: {report.campaigns} campaigns forecast ({report.messages} messages in "
            f"the next {FORECAST_DAYS} days), {report.kept} recent forecasts kept"
        )
        for name, why in report.failed.items():
            context.log.warning(f"{tenant}/{name} cannot be forecast: {why}")
            failed[f"{tenant}/{name}"] = why
        campaigns += report.campaigns
        kept += report.kept
        messages += report.messages
    yield dg.MaterializeResult(
        asset_key="send_forecasts",
        metadata={
            "campaigns": campaigns,
            "kept": kept,
            "run_at": now.isoformat(),  # the new forecasts' forecast_at
            "failed": dg.MetadataValue.json(failed),
        },
    )
    yield dg.MaterializeResult(asset_key="send_forecast_days", metadata={"messages": messages})


@dbt_assets(
    manifest=dbt_project.manifest_path,
    project=dbt_project,
    select=f"tag:{PARTITIONED_TAG}",
    dagster_dbt_translator=PenguinDbtTranslator(),
    partitions_def=ANALYTICS_DAYS,
    backfill_policy=dg.BackfillPolicy.single_run(),
    pool=DBT_POOL,
    # Before the forecasts when both may run: the facts and daily marts do not wait for them.
    op_tags={PRIORITY_TAG: "1"},
)
def analytics_daily(
    context: dg.AssetExecutionContext, dbt: DbtCliResource, postgres: PostgresResource
):
    with postgres.dbt_environment():
        yield from dbt.cli(build_args(context), context=context).stream()


@dbt_assets(
    manifest=dbt_project.manifest_path,
    project=dbt_project,
    exclude=f"tag:{PARTITIONED_TAG}",
    dagster_dbt_translator=PenguinDbtTranslator(),
    pool=DBT_POOL,
)
def analytics_models(
    context: dg.AssetExecutionContext, dbt: DbtCliResource, postgres: PostgresResource
):
    with postgres.dbt_environment():
        yield from dbt.cli(BUILD, context=context).stream()


analytics_job = dg.define_asset_job(
    "analytics_job",
    selection=ANALYTICS,
    partitions_def=ANALYTICS_DAYS,
    description=(
        "dbt build of the daily marts, the send forecasts, then the other marts, with their "
        "tests. A partition range rebuilds those reporting days whole; a refresh (tag "
        "penguin/analytics=refresh) builds what changed."
    ),
    tags=DBT_TAGS,
)

#: A refresh in these holds the next one back (as the run queue's tag limit would; a run
#: created and never submitted, NOT_STARTED, holds nothing).
_ACTIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]

#: Rows written by a transaction that the previous tick's snapshot (`:since`, a `pg_snapshot`)
#: did not see: in commit order, by the `change_xid` the database sets (migration 0020), whatever
#: time the writer put on them. The first comparison lets the index find them. A `change_xid`
#: beyond this statement's snapshot can only be another server's, kept by a dump restored here:
#: left out (the tick after the restore takes every row, see `_FROM_ELSEWHERE`), or it would be
#: new at every tick until this server's count passed it.
_NEW = (
    "change_xid >= pg_snapshot_xmin(cast(:since as pg_snapshot)) "
    "and change_xid < pg_snapshot_xmax(pg_current_snapshot()) "
    "and not pg_visible_in_snapshot(change_xid, cast(:since as pg_snapshot))"
)
#: The snapshot of a first tick: it sees no transaction, so every row written since migration
#: 0020 is new (3 is the first normal transaction id).
_NOTHING_SEEN = "3:3:"
#: Whether the cursor's snapshot is ahead of this server's transactions: taken on another server
#: whose dump was restored here (pg_dump keeps `change_xid`, a new server counts from its own
#: start). Every change here would be below it and never found: such a cursor has seen nothing.
_FROM_ELSEWHERE = sa.text(
    "select pg_snapshot_xmin(cast(:since as pg_snapshot)) "
    "> pg_snapshot_xmax(pg_current_snapshot())"
)

#: What the sensor watches: each table's rows new since the last tick (`_NEW`), as
#: `tenant_id, at` (the time whose reporting day they touch: a label, clamped to the partitions
#: that exist), and the days they touch besides their own `at`, or None.
_WATCHED: dict[str, tuple[str, str | None]] = {
    "sends": (
        f"select tenant_id, coalesce(sent_at, queued_at) as at from app.sent_emails where {_NEW}",
        None,
    ),
    # An event touches its own day and its message's send day (the cohort).
    "events": (
        f"select tenant_id, occurred_at as at, sent_email_id from app.email_events where {_NEW}",
        "select s.tenant_id, coalesce(s.sent_at, s.queued_at) "
        "from app.sent_emails s join new_events e on e.sent_email_id = s.id",
    ),
    # A move through a wait, a condition or an action sends nothing and changes the funnel.
    "moves": (
        f"select tenant_id, occurred_at as at from app.step_transitions where {_NEW}",
        None,
    ),
    # A campaign paused, resumed or edited: its dimension and its forecast (campaigns are few:
    # no index needed).
    "campaigns": (
        f"select tenant_id, updated_at as at from app.campaigns where {_NEW}",
        None,
    ),
    # A sender account paused, resumed or edited: its dimension and the forecasts of the
    # campaigns it sends for (accounts are few too).
    "senders": (
        f"select tenant_id, updated_at as at from app.sender_accounts where {_NEW}",
        None,
    ),
}


def _changed_days_sql() -> sa.TextClause:
    """The rows written since the snapshot `:since`: how many, the reporting days they touch,
    and this statement's own snapshot (the next tick's `:since`: what it read is exactly what
    that snapshot saw). Run as the analytics role, across tenants; the large tables'
    `change_xid` is indexed, so a tick reads only the rows that are new."""
    new = [f"new_{k} as ({rows})" for k, (rows, _) in _WATCHED.items()]
    touched = [f"select tenant_id, at from new_{k}" for k in _WATCHED]
    touched += [also for _, also in _WATCHED.values() if also]
    return sa.text(
        "with "
        + ",\n".join(new)
        + ",\ntouched as ("
        + "\nunion all\n".join(touched)
        + "),\n"
        "days as (\n"
        "    select (touched.at at time zone t.reporting_timezone)::date as day\n"
        "    from touched join app.tenants t on t.id = touched.tenant_id\n"
        ")\n"
        "select (select count(*) from touched) as touched,\n"
        "(select min(day) from days) as first_day, (select max(day) from days) as last_day,\n"
        "pg_current_snapshot()::text as seen"
    )


_CHANGED_DAYS = _changed_days_sql()
#: The cursor's entry for the kept forecast a late run was asked for.
_LATE = "late_forecast"
#: The cursor's entry for the snapshot of the last tick.
_SEEN = "seen"
#: The oldest forecast a run kept instead of simulating again (migration 0018): once it is
#: PENGUIN_FORECAST_INTERVAL old, the sensor asks for a run even if nothing else changed.
_KEPT_FORECASTS = sa.text(
    "select min(forecast_at) from app.send_forecasts where kept_at is not null"
)


def changed_days(
    conn: sa.Connection, cursor: Mapping[str, Any]
) -> tuple[tuple[date, date] | None, dict[str, Any]]:
    """The range of reporting days that rows written since `cursor` touch (None: nothing new),
    and the cursor past them.

    The cursor holds the snapshot of the last tick (`pg_current_snapshot()`): a row is new if
    the transaction that last wrote it had not committed then, in commit order, whatever time
    the row carries (a writer's future `now`, a back-dated generator, a slow clock), and however
    long that transaction ran. A cursor without one (a first tick, a cursor of a release that
    watched timestamps) or with one of another server (a dump restored here) has seen
    nothing."""
    since = cursor.get(_SEEN) or _NOTHING_SEEN
    if conn.execute(_FROM_ELSEWHERE, {"since": since}).scalar():
        since = _NOTHING_SEEN
    row = conn.execute(_CHANGED_DAYS, {"since": since}).one()
    moved: dict[str, Any] = {_SEEN: row.seen}
    if not row.touched or row.first_day is None:
        return None, moved
    return (row.first_day, row.last_day), moved


def newest_day(now: datetime) -> date:
    """The newest reporting day any tenant can be in at `now` (today in UTC+14)."""
    return now.astimezone(ZoneInfo(EARLIEST_ZONE)).date()


def partition_range(days: tuple[date, date], now: datetime) -> tuple[str, str]:
    """`days` as partition keys, clamped to the partitions that exist at `now` (a message timed
    before the first partition is still built by the refresh; only the label is clamped)."""
    first = ANALYTICS_DAYS.get_first_partition_key()
    last = newest_day(now).isoformat()  # end_offset=1: today
    start = min(max(days[0].isoformat(), first), last)
    end = min(max(days[1].isoformat(), first), last)
    return start, end


def refresh_tags(days: tuple[date, date], now: datetime) -> dict[str, str]:
    """The tags of a run that refreshes the marts: what changed, labelled as `days`."""
    start, end = partition_range(days, now)
    return {
        REFRESH_TAG: "refresh",
        ASSET_PARTITION_RANGE_START_TAG: start,
        ASSET_PARTITION_RANGE_END_TAG: end,
    }


@dg.sensor(
    job=analytics_job,
    minimum_interval_seconds=Settings.from_env().analytics_interval,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Starts an incremental analytics_job run over the reporting days that new sends, "
        "events, step moves, campaign and sender changes touch, one run at a time; and one "
        "when a forecast a run kept is PENGUIN_FORECAST_INTERVAL old."
    ),
)
def analytics_freshness_sensor(context: dg.SensorEvaluationContext, postgres: PostgresResource):
    active = context.instance.get_run_records(
        dg.RunsFilter(job_name=analytics_job.name, statuses=_ACTIVE), limit=1
    )
    if active:
        # The run under way builds whatever it finds; what lands after its start is newer than
        # this cursor and is seen by the tick after it ends.
        return dg.SkipReason(f"run {active[0].dagster_run.run_id} is refreshing the marts")
    cursor = json.loads(context.cursor) if context.cursor else {}
    with postgres.db.analytics.connect() as conn:
        days, moved = changed_days(conn, cursor)
        now = utcnow()
        behind = None if days else conn.execute(_KEPT_FORECASTS).scalar()
    # the kept forecast a late run was asked for: once only (a run that failed to forecast it
    # again is not retried at every tick; the next change starts one)
    moved[_LATE] = cursor.get(_LATE)
    every = timedelta(seconds=Settings.from_env().forecast_interval)
    late = days is None and behind is not None and behind <= now - every
    if late and cursor.get(_LATE) != behind.isoformat():
        # A run kept it while things changed; none came since to forecast them.
        moved[_LATE] = behind.isoformat()
        context.update_cursor(json.dumps(moved))
        today = newest_day(now)
        return dg.RunRequest(tags=refresh_tags((today, today), now))
    context.update_cursor(json.dumps(moved))
    if days is None:
        return dg.SkipReason("no new sends, events, step moves, campaign or sender changes")
    return dg.RunRequest(tags=refresh_tags(days, now))


@dg.schedule(
    job=analytics_job,
    cron_schedule="15 12 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Rebuilds the last two closed reporting days whole, every day at 12:15 UTC.",
)
def analytics_repair_schedule(context: dg.ScheduleEvaluationContext):
    """Yesterday and the day before, rebuilt whole from the raw tables (at 12:00 UTC yesterday
    has closed in every time zone, UTC-12 last): a repair of anything the refreshes missed,
    should a refresh have missed any (they follow commit order, so none should: a mart damaged
    by hand, a model changed and deployed without a full refresh)."""
    today = context.scheduled_execution_time.astimezone(UTC).date()
    return dg.RunRequest(
        tags={
            ASSET_PARTITION_RANGE_START_TAG: (today - timedelta(days=2)).isoformat(),
            ASSET_PARTITION_RANGE_END_TAG: (today - timedelta(days=1)).isoformat(),
        }
    )


defs = dg.Definitions(
    assets=[send_forecasts, analytics_daily, analytics_models],
    jobs=[analytics_job],
    sensors=[analytics_freshness_sensor],
    schedules=[analytics_repair_schedule],
    resources={"dbt": DbtCliResource(project_dir=dbt_project, dbt_executable=DBT_EXECUTABLE)},
)
