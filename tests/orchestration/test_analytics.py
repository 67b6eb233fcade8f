"""The marts in Dagster: the freshness sensor over the source tables, its incremental refresh
runs, and partition ranges that rebuild whole days, all through real dbt builds."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

import dagster as dg
import sqlalchemy as sa
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)
from dagster_dbt import DbtCliResource

from engine.campaigns import pause_campaign
from engine.db import tenant_transaction
from engine.senders import set_sender_active
from engine.sending.scheduler import send_due
from engine.tracking.events import Event, write
from orchestration import analytics
from orchestration.definitions import defs
from orchestration.resources import PostgresResource
from tests.factories import dbt, seed_tenant


def _resources(database) -> dict:
    return {
        "postgres": PostgresResource(
            database_url=database.settings.database_url, penguin_home=str(database.settings.home)
        ),
        "dbt": DbtCliResource(
            project_dir=analytics.dbt_project, dbt_executable=analytics.DBT_EXECUTABLE
        ),
    }


def _tick(database, instance, cursor: str | None):
    """One sensor evaluation: (its result, the cursor it left)."""
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, resources=_resources(database)
    ) as context:
        result = analytics.analytics_freshness_sensor(context)
        return result, context.cursor


def _forecast_run(database, instance, config: dict | None = None) -> tuple[int, int]:
    """`send_forecasts` alone: (campaigns forecast, forecasts kept)."""
    result = dg.materialize(
        [analytics.send_forecasts],
        resources=_resources(database),
        instance=instance,
        run_config={"ops": {"send_forecasts": {"config": config}}} if config else None,
    )
    meta = result.asset_materializations_for_node("send_forecasts")[0].metadata
    return meta["campaigns"].value, meta["kept"].value


def _kept_at(database) -> datetime | None:
    with database.owner.connect() as conn:
        return conn.execute(sa.text("select kept_at from app.send_forecasts")).scalar_one()


def _run(database, instance, tags: dict[str, str], *, daily_only: bool = False):
    """`analytics_job` as the daemon would launch it for a request with these tags (with
    `daily_only`, its daily models alone: one dbt build instead of three)."""
    result = dg.materialize(
        [analytics.analytics_models, analytics.analytics_daily],
        resources=_resources(database),
        instance=instance,
        tags={**analytics.DBT_TAGS, **tags},
        selection=dg.AssetSelection.assets(analytics.analytics_daily) if daily_only else None,
        raise_on_error=False,
    )
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    return result


def _days(request: dg.RunRequest) -> tuple[str, str]:
    tags = request.tags
    return tags[ASSET_PARTITION_RANGE_START_TAG], tags[ASSET_PARTITION_RANGE_END_TAG]


def _campaign_days(database) -> dict[date, tuple[int, int]]:
    with database.analytics.connect() as conn:
        rows = conn.execute(
            sa.text("select send_date, sent, unique_opens from analytics_marts.campaign_daily")
        ).all()
    return {r.send_date: (r.sent, r.unique_opens) for r in rows}


def test_the_sensor_refreshes_what_changed_and_a_partition_range_rebuilds_whole_days(
    database, smtp_server, now, tmp_path
):
    """The refresh: the sensor asks for the days new sends and a late event touch, and the
    incremental build counts them. The backfill: a range without the refresh tag recomputes
    every message and daily row of its days from the raw tables, and no other day."""
    sent_at = now - timedelta(days=3, hours=-13)  # 23:00 UTC, the next day in UTC+14
    acme = seed_tenant(database, "acme", sent_at, tmp_path)
    with database.owner.begin() as conn:
        conn.execute(sa.text("update app.tenants set reporting_timezone = 'Pacific/Kiritimati'"))
    send_due(database.app, smtp_server.server(), sent_at)
    send_day = (sent_at + timedelta(hours=14)).date()
    seed_tenant(database, "beta", now - timedelta(days=1), tmp_path)  # reports in UTC
    send_due(database.app, smtp_server.server(), now - timedelta(days=1))
    other_day = (now - timedelta(days=1)).date()

    with dg.instance_for_test() as instance:
        first, cursor = _tick(database, instance, None)
        assert isinstance(first, dg.RunRequest), first
        assert _days(first) == (send_day.isoformat(), other_day.isoformat())
        assert first.tags[analytics.REFRESH_TAG] == "refresh"
        # Nothing new since: no run.
        assert isinstance(_tick(database, instance, cursor)[0], dg.SkipReason)

        result = _run(database, instance, first.tags)
        assert _campaign_days(database) == {send_day: (3, 0), other_day: (3, 0)}
        materialized = {
            (e.asset_key.to_user_string(), e.partition)
            for e in result.get_asset_materialization_events()
        }
        assert ("analytics/campaign_daily", send_day.isoformat()) in materialized
        assert ("analytics/dim_contacts", None) in materialized
        assert ("analytics/stg_app__sent_emails", send_day.isoformat()) in materialized

        # An open of a message sent days before, recorded now: its send day (the cohort) and
        # today's event day both change; the range spans them.
        with database.analytics.connect() as conn:
            message = conn.execute(
                sa.text("select id from app.sent_emails where tenant_id = :t limit 1"),
                {"t": acme.tenant_id},
            ).scalar_one()
        opened = datetime.now(UTC)
        write(database.app, [Event("open", acme.tenant_id, message, opened, "open:late")])
        late, cursor = _tick(database, instance, cursor)
        assert isinstance(late, dg.RunRequest)
        today = (opened + timedelta(hours=14)).date()
        last_key = analytics.ANALYTICS_DAYS.get_last_partition_key()
        assert _days(late) == (send_day.isoformat(), min(today.isoformat(), last_key))

        # While a refresh is queued or under way, no other is asked for; the change waits.
        run = instance.create_run_for_job(
            job_def=defs.resolve_job_def("analytics_job"), status=dg.DagsterRunStatus.STARTED
        )
        assert isinstance(_tick(database, instance, None)[0], dg.SkipReason)
        instance.report_run_failed(run)

        _run(database, instance, late.tags, daily_only=True)
        assert _campaign_days(database) == {send_day: (3, 1), other_day: (3, 0)}
        with database.analytics.connect() as conn:
            events = conn.execute(
                sa.text("select event_date, events from analytics_marts.engagement_daily")
            ).all()
        assert [tuple(r) for r in events] == [(today, 1)]

        # Damage both days in the marts (the analytics role owns them), in a way the data tests
        # pass (the numbers still add up); rebuild the first day alone.
        with database.analytics.begin() as conn:
            conn.execute(
                sa.text(
                    "update analytics_marts.campaign_daily "
                    "set sent = 0, delivered = 0, unique_opens = 0"
                )
            )
            conn.execute(sa.text("update analytics_marts.fct_sends set attempts = 99"))
        result = _run(database, instance, _range(send_day, send_day), daily_only=True)
        assert _campaign_days(database) == {send_day: (3, 1), other_day: (0, 0)}
        with database.analytics.connect() as conn:
            attempts = conn.execute(
                sa.text("select send_date, max(attempts) from analytics_marts.fct_sends group by 1")
            ).all()
        assert dict(attempts) == {send_day: 1, other_day: 99}
        partitions = {
            e.partition
            for e in result.get_asset_materialization_events()
            if e.asset_key.path[-1] == "fct_sends"
        }
        assert partitions == {send_day.isoformat()}

    # Numbers that do not add up fail the daily models' data test.
    with database.analytics.begin() as conn:
        conn.execute(sa.text("update analytics_marts.campaign_daily set sent = 1"))
    output = dbt(database, "test", "--select", "campaign_daily", check=False)
    assert re.search(r"FAIL 2 metrics_add_up_campaign_daily", output), output


def test_a_back_dated_row_or_a_late_commit_still_wakes_the_sensor(
    database, smtp_server, now, tmp_path
):
    """New is in commit order, not by the writer's clock: a row stamped a month back, or written
    by a transaction under way during a tick and committed after it, asks for a run of its day
    at the next tick (and only once). Ticks only, no build."""
    sent_at = now - timedelta(days=3)
    acme = seed_tenant(database, "acme", sent_at, tmp_path)
    send_due(database.app, smtp_server.server(), sent_at)
    backdate = sa.text(
        "update app.sent_emails set updated_at = :at where id = "
        "(select id from app.sent_emails where tenant_id = :t order by id limit 1)"
    )
    with dg.instance_for_test() as instance:
        first, cursor = _tick(database, instance, None)
        assert isinstance(first, dg.RunRequest), first
        assert isinstance(_tick(database, instance, cursor)[0], dg.SkipReason)

        with database.owner.begin() as conn:
            conn.execute(backdate, {"at": sent_at - timedelta(days=30), "t": acme.tenant_id})
        back_dated, cursor = _tick(database, instance, cursor)
        assert isinstance(back_dated, dg.RunRequest), back_dated
        assert _days(back_dated)[0] == sent_at.date().isoformat()
        assert isinstance(_tick(database, instance, cursor)[0], dg.SkipReason)

        with database.owner.connect() as slow:
            with slow.begin():
                slow.execute(backdate, {"at": sent_at - timedelta(days=31), "t": acme.tenant_id})
                during, cursor = _tick(database, instance, cursor)
                assert isinstance(during, dg.SkipReason)
            late_commit, cursor = _tick(database, instance, cursor)
        assert isinstance(late_commit, dg.RunRequest), late_commit
        assert isinstance(_tick(database, instance, cursor)[0], dg.SkipReason)


def _range(first: date, last: date) -> dict[str, str]:
    return {
        ASSET_PARTITION_RANGE_START_TAG: first.isoformat(),
        ASSET_PARTITION_RANGE_END_TAG: last.isoformat(),
    }


def test_a_step_move_or_a_campaign_change_alone_refreshes_and_the_run_forecasts_first(
    database, now, tmp_path, monkeypatch
):
    """No message and no event: an enrollment that leaves its step, a campaign paused. Each
    wakes the sensor, and the run it asks for builds the daily marts, then stores the
    forecasts, then builds their marts. A forecast a later run kept brings one more run once it
    is PENGUIN_FORECAST_INTERVAL old, asked for once; a sender paused wakes the sensor too."""
    clock = [now + timedelta(minutes=3)]
    monkeypatch.setattr(analytics, "utcnow", lambda: clock[0])
    monkeypatch.delenv("PENGUIN_FORECAST_INTERVAL", raising=False)  # the default, 5 minutes
    acme = seed_tenant(database, "acme", now, tmp_path)
    with dg.instance_for_test() as instance:
        first, cursor = _tick(database, instance, None)
        assert isinstance(first, dg.RunRequest)  # the enrollments' entries
        assert isinstance(_tick(database, instance, cursor)[0], dg.SkipReason)

        with tenant_transaction(database.app, acme.tenant_id) as conn:
            conn.execute(
                sa.text(
                    "update app.campaign_contacts set status = 'exited', exit_reason = 'manual', "
                    "updated_at = :at where id = (select min(id::text)::uuid "
                    "from app.campaign_contacts)"
                ),
                {"at": now + timedelta(minutes=1)},
            )
        moved, cursor = _tick(database, instance, cursor)
        assert isinstance(moved, dg.RunRequest), moved
        assert _days(moved)[0] == now.date().isoformat()
        assert isinstance(_tick(database, instance, cursor)[0], dg.SkipReason)

        with tenant_transaction(database.app, acme.tenant_id) as conn:
            pause_campaign(conn, acme.campaign_id, now + timedelta(minutes=2))
        paused, cursor = _tick(database, instance, cursor)
        assert isinstance(paused, dg.RunRequest), paused

        result = dg.materialize(
            [analytics.send_forecasts, analytics.analytics_models, analytics.analytics_daily],
            resources=_resources(database),
            instance=instance,
            tags={**analytics.DBT_TAGS, **paused.tags},
        )
        assert result.success
        order = [e.asset_key.to_user_string() for e in result.get_asset_materialization_events()]
        # the daily marts first (they do not wait for the simulations), then the forecasts,
        # then their marts
        assert order.index("analytics/fct_sends") < order.index("send_forecasts")
        assert order.index("send_forecasts") < order.index("analytics/campaign_forecasts")
        forecast_meta = result.asset_materializations_for_node("send_forecasts")[0].metadata
        assert (forecast_meta["campaigns"].value, forecast_meta["kept"].value) == (1, 0)

        # the next run within the interval keeps it, and the sensor, with nothing new to see,
        # waits; once the kept forecast is that old, it asks for a run (once: a run that
        # failed is not retried at every tick), which forecasts again
        clock[0] = now + timedelta(minutes=4)
        assert _forecast_run(database, instance) == (0, 1)
        assert _kept_at(database) == clock[0]
        assert isinstance(_tick(database, instance, cursor)[0], dg.SkipReason)
        clock[0] = now + timedelta(minutes=8)  # the forecast, made at +3, is 5 minutes old
        late, cursor = _tick(database, instance, cursor)
        assert isinstance(late, dg.RunRequest), late
        assert late.tags[analytics.REFRESH_TAG] == "refresh"
        assert isinstance(_tick(database, instance, cursor)[0], dg.SkipReason)
        assert _forecast_run(database, instance) == (1, 0)
        assert _kept_at(database) is None
        assert isinstance(_tick(database, instance, cursor)[0], dg.SkipReason)

        # a sender paused: the sensor sees it, and the run forecasts its campaign again
        with tenant_transaction(database.app, acme.tenant_id) as conn:
            set_sender_active(conn, "sales@acme.example", False, now + timedelta(minutes=9))
        paused_sender, cursor = _tick(database, instance, cursor)
        assert isinstance(paused_sender, dg.RunRequest), paused_sender
        clock[0] = now + timedelta(minutes=9)
        assert _forecast_run(database, instance) == (1, 0)
        assert _forecast_run(database, instance, {"every_campaign": True}) == (1, 0)
    with database.analytics.connect() as conn:
        row = conn.execute(
            sa.text(
                "select campaign_name, forecast_messages, forecast_notes "
                "from analytics_marts.campaign_forecasts"
            )
        ).one()
    assert row.campaign_name == "acme outreach"
    assert row.forecast_messages == 2  # one of its three left the sequence
    assert "The campaign is paused: forecast as if resumed now." in row.forecast_notes


def test_after_a_restore_from_a_server_further_on_the_sensor_sees_each_change_once(
    database, now, tmp_path
):
    """pg_dump keeps every `change_xid`, and the sensor's cursor keeps its snapshot, of a server
    whose transaction count was further on than this one's: a change made here is still new,
    and the rows that kept the other server's ids are not new at every tick."""
    seed_tenant(database, "acme", now, tmp_path)
    with database.owner.begin() as conn:
        ahead = conn.execute(sa.text("select pg_current_xact_id()::text::bigint + 1000000"))
        ahead = str(ahead.scalar_one())
        for statement in (
            "alter table app.campaigns disable trigger campaigns_change_xid",
            "update app.campaigns set change_xid = cast(:ahead as xid8), "
            "updated_at = updated_at - interval '10 days'",
            "alter table app.campaigns enable always trigger campaigns_change_xid",
        ):
            conn.execute(sa.text(statement), {"ahead": ahead})
    with database.owner.begin() as conn:
        conn.execute(sa.text("update app.sender_accounts set updated_at = updated_at"))
    with database.analytics.connect() as conn:
        days, cursor = analytics.changed_days(conn, {"seen": f"{ahead}:{ahead}:"})
        assert days == (now.date(), now.date())
        assert analytics.changed_days(conn, cursor)[0] is None


def test_the_repair_schedule_rebuilds_the_two_closed_days():
    context = dg.build_schedule_context(
        scheduled_execution_time=datetime(2026, 11, 20, 12, 15, tzinfo=UTC)
    )
    request = analytics.analytics_repair_schedule(context)
    assert _days(request) == ("2026-11-18", "2026-11-19")
    assert analytics.REFRESH_TAG not in request.tags


def test_days_before_the_first_partition_are_labelled_by_it():
    now = datetime(2026, 11, 20, 12, tzinfo=UTC)
    assert analytics.partition_range((date(2020, 1, 1), date(2026, 11, 21)), now) == (
        "2025-01-01",
        "2026-11-21",
    )
    # No partition beyond the newest day any time zone is in.
    assert analytics.partition_range((date(2026, 11, 20), date(2027, 1, 1)), now)[1] == (
        "2026-11-21"
    )
