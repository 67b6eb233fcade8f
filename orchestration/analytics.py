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

`analytics_freshness_sensor` watches `sent_emails.updated_at`, `email_events.recorded_at`,
`step_transitions.recorded_at`, `campaigns.updated_at` and `sender_accounts.updated_at` (the
first three indexed, so a tick reads only the newest rows). When one moved it asks for one run
of `analytics_job` over the range of reporting days the new rows touch, tagged as a refresh:
dbt then builds incrementally, merging only the messages and events that changed and
rebuilding only the days they belong to. So a send, an event, a move through a wait or a
condition, a campaign or a sender paused or edited reaches the marts (and the forecasts) one
sensor interval plus one build after it is written, whatever wrote it (a send run, the
tracking server, a mailbox poll, an import, the CLI, the operators' corner). An upload run
refreshes the marts itself, in the same run. The sensor also asks, once, for a run when a
forecast a run kept is `PENGUIN_FORECAST_INTERVAL` old.

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

#: How far before its watermark the sensor looks again: a transaction that started earlier
#: (its timestamps are older than rows already seen) may commit after a tick.
LOOKBACK = timedelta(minutes=10)

#: What the sensor watches: watermark name → (the rows written since `:since`, as
#: `tenant_id, at` (the time whose reporting day they touch) and `stamp` (the column watched,
#: indexed); the days they touch besides their own `at`, or None).
_WATCHED: dict[str, tuple[str, str | None]] = {
    "sends": (
        "select tenant_id, coalesce(sent_at, queued_at) as at, updated_at as stamp "
        "from app.sent_emails where updated_at > :sends_since",
        None,
    ),
    # An event touches its own day and its message's send day (the cohort).
    "events": (
        "select tenant_id, occurred_at as at, recorded_at as stamp, sent_email_id "
        "from app.email_events where recorded_at > :events_since",
        "select s.tenant_id, coalesce(s.sent_at, s.queued_at) "
        "from app.sent_emails s join new_events e on e.sent_email_id = s.id",
    ),
    # A move through a wait, a condition or an action sends nothing and changes the funnel.
    "moves": (
        "select tenant_id, occurred_at as at, recorded_at as stamp "
        "from app.step_transitions where recorded_at > :moves_since",
        None,
    ),
    # A campaign paused, resumed or edited: its dimension and its forecast (campaigns are few:
    # no index needed).
    "campaigns": (
        "select tenant_id, updated_at as at, updated_at as stamp "
        "from app.campaigns where updated_at > :campaigns_since",
        None,
    ),
    # A sender account paused, resumed or edited: its dimension and the forecasts of the
    # campaigns it sends for (accounts are few too).
    "senders": (
        "select tenant_id, updated_at as at, updated_at as stamp "
        "from app.sender_accounts where updated_at > :senders_since",
        None,
    ),
}
_WATERMARKS = tuple(_WATCHED)


def _changed_days_sql() -> sa.TextClause:
    """The rows written since `LOOKBACK` before each watermark: the reporting days they touch,
    their newest stamps, how many there are, and how many are within `LOOKBACK` of the newest
    (the next tick's count). Run as the analytics role, across tenants; the stamps of the large
    tables are indexed, so a tick reads only their newest rows."""
    new = [f"new_{k} as ({rows})" for k, (rows, _) in _WATCHED.items()]
    marks = [f"{k}_mark as (select max(stamp) as mark from new_{k})" for k in _WATCHED]
    touched = [f"select tenant_id, at from new_{k}" for k in _WATCHED]
    touched += [also for _, also in _WATCHED.values() if also]
    columns = []
    for k in _WATCHED:
        columns += [
            f"(select mark from {k}_mark) as {k}_mark",
            f"(select count(*) from new_{k}) as {k}_seen",
            f"(select count(*) from new_{k}, {k}_mark where stamp > mark - :lookback) "
            f"as {k}_recent",
        ]
    return sa.text(
        "with "
        + ",\n".join(new + marks)
        + ",\ntouched as ("
        + "\nunion all\n".join(touched)
        + "),\n"
        "days as (\n"
        "    select (touched.at at time zone t.reporting_timezone)::date as day\n"
        "    from touched join app.tenants t on t.id = touched.tenant_id\n"
        ")\n"
        "select (select min(day) from days) as first_day, "
        "(select max(day) from days) as last_day,\n" + ",\n".join(columns)
    )


_CHANGED_DAYS = _changed_days_sql()
#: The cursor's entry for the kept forecast a late run was asked for.
_LATE = "late_forecast"
#: The oldest forecast a run kept instead of simulating again (migration 0018): once it is
#: PENGUIN_FORECAST_INTERVAL old, the sensor asks for a run even if nothing else changed.
_KEPT_FORECASTS = sa.text(
    "select min(forecast_at) from app.send_forecasts where kept_at is not null"
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def changed_days(
    conn: sa.Connection, cursor: Mapping[str, Any]
) -> tuple[tuple[date, date] | None, dict[str, Any]]:
    """The range of reporting days that rows written since `cursor` touch (None: nothing new),
    and the cursor past them.

    The cursor holds, per watched table, the newest stamp seen and how many rows were within
    `LOOKBACK` of it. A row is new if it is newer, or if that count grew: a transaction that
    began before the newest row seen, and committed after the tick that saw it."""
    marks = {k: datetime.fromisoformat(cursor.get(k, _EPOCH.isoformat())) for k in _WATERMARKS}
    counts = {k: int(cursor.get(f"{k}_recent", 0)) for k in _WATERMARKS}
    row = (
        conn.execute(
            _CHANGED_DAYS,
            {**{f"{k}_since": marks[k] - LOOKBACK for k in _WATERMARKS}, "lookback": LOOKBACK},
        )
        .one()
        ._mapping
    )
    moved: dict[str, Any] = {}
    changed = False
    for kind in _WATERMARKS:
        mark = row[f"{kind}_mark"]
        changed |= (mark is not None and mark > marks[kind]) or row[f"{kind}_seen"] > counts[kind]
        moved[kind] = (mark or marks[kind]).isoformat()
        moved[f"{kind}_recent"] = row[f"{kind}_recent"] if mark is not None else counts[kind]
    if not changed or row["first_day"] is None:
        return None, moved
    return (row["first_day"], row["last_day"]), moved


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
    such as a row committed so late that the incremental models' 24-hour lookback passed it."""
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
