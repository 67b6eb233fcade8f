"""The Dagster jobs operators use for campaigns, executed for real against a real database and
a real SMTP server: campaign_control_job launches, pauses and resumes (a refused action fails
the run, saying why); a send_due_job run carries the counts of its engine pass; the due-sends
sensor asks for a run whenever the engine has work, enrollment of new list members included;
and at most one send run is started at a time by the daemon's run queue.

The sensor's basics (a SkipReason with nothing due, a stable run_key, a new key after a failed
run) are in tests/orchestration/test_definitions.py.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from engine import campaign_files as cf
from engine.db import Database, tenant_transaction
from engine.senders import create_sender
from engine.sending import store
from engine.tenants import create_tenant
from orchestration import analytics, campaigns, ingestion, sending
from orchestration.campaigns import campaign_control_job
from orchestration.resources import PostgresResource, SmtpResource
from orchestration.sending import due_sends_sensor
from tests.engine.campaign_rows import add_contact

SENDER = "alice@acme.example"


def _now() -> datetime:
    """The wall clock: Dagster's runs and sensors read it (orchestration.clock)."""
    return datetime.now(UTC)


def _campaign(name: str = "q4", **top: Any) -> dict[str, Any]:
    """A campaign file's content (as `penguin campaign apply` reads it)."""
    return {
        "name": name,
        "list": "leads",
        "senders": [SENDER],
        "schedule": {
            "window": "00:00-24:00",
            "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
        },
        "steps": [{"id": "intro", "email": {"subject": "Hi {{ first_name }}", "text": "Hello"}}],
        **top,
    }


@pytest.fixture
def acme(database: Database) -> uuid.UUID:
    """Tenant acme with a sender that may send at once (no gap, a high limit)."""
    tenant_id, _ = create_tenant(database.owner, "acme")
    with tenant_transaction(database.app, tenant_id) as conn:
        create_sender(conn, SENDER, "Alice", daily_limit=100_000, min_gap_seconds=0)
    return tenant_id


def _apply(database: Database, tenant_id: uuid.UUID, data: dict[str, Any]) -> None:
    with tenant_transaction(database.app, tenant_id) as conn:
        cf.apply(conn, cf.parse(data), _now())


def _list_id(conn: sa.Connection, name: str = "leads") -> uuid.UUID:
    return conn.execute(
        sa.text("select id from app.contact_lists where name = :name"), {"name": name}
    ).scalar_one()


def _add_contacts(
    database: Database, tenant_id: uuid.UUID, emails: list[str], timezone: str | None = None
) -> None:
    with tenant_transaction(database.app, tenant_id) as conn:
        list_id = _list_id(conn)
        for email in emails:
            add_contact(conn, email, list_id=list_id, first_name="Ann", timezone=timezone)


def _resources(database: Database, smtp_port: int | None = None) -> dict[str, object]:
    return {
        "postgres": PostgresResource(
            database_url=database.settings.database_url, penguin_home=str(database.settings.home)
        ),
        "smtp": SmtpResource(sink_host="127.0.0.1", sink_port=smtp_port),
    }


def _control(
    database: Database, action: str, campaign: str = "q4", tenant: str = "acme"
) -> dg.ExecuteInProcessResult:
    """One run of campaign_control_job, as the Launchpad starts it."""
    return campaign_control_job.execute_in_process(
        run_config={
            "ops": {
                "control_campaign": {
                    "config": {"tenant": tenant, "campaign": campaign, "action": action}
                }
            }
        },
        resources={"postgres": _resources(database)["postgres"]},
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )


def _failure(result: dg.ExecuteInProcessResult) -> str:
    """The failure's description, as the run's page shows it."""
    assert not result.success
    failure = result.failure_data_for_node("control_campaign")
    assert failure is not None and failure.user_failure_data is not None, failure
    return failure.user_failure_data.description


def _state(database: Database, tenant_id: uuid.UUID, name: str = "q4") -> tuple[str, int]:
    with tenant_transaction(database.app, tenant_id) as conn:
        return conn.execute(
            sa.text(
                "select c.status, (select count(*) from app.campaign_contacts cc "
                "where cc.campaign_id = c.id) from app.campaigns c where c.name = :name"
            ),
            {"name": name},
        ).one()


# -- campaign_control_job -------------------------------------------------------------------------


def test_an_operator_launches_pauses_and_resumes_a_campaign_with_runs(database, acme):
    _apply(database, acme, _campaign())
    _add_contacts(database, acme, ["ann@example.com", "bob@example.com", "cy@example.com"])

    launched = _control(database, "launch")
    assert launched.success
    assert launched.output_for_node("control_campaign") == (
        "launch acme/q4: 1 email step(s) rendered: checked all 3 contacts"
    )
    assert _state(database, acme) == ("active", 3)  # enrolled at once

    paused = _control(database, "pause")
    assert paused.output_for_node("control_campaign") == "pause acme/q4: now paused"
    assert _state(database, acme) == ("paused", 3)

    resumed = _control(database, "resume")
    [event] = [e for e in resumed.all_events if e.event_type_value == "STEP_OUTPUT"]
    metadata = {k: v.value for k, v in event.step_output_data.metadata.items()}
    assert metadata == {"tenant": "acme", "campaign": "q4", "result": "now active"}
    assert _state(database, acme) == ("active", 3)


def test_a_launch_that_needs_an_approval_fails_its_run_saying_how_to_approve(database, acme):
    _apply(database, acme, _campaign(approval="required"))
    _add_contacts(database, acme, ["ann@example.com"])
    description = _failure(_control(database, "launch"))
    assert description == (
        "launch acme/q4 refused: the campaign needs an approval before it launches: approval "
        "is required and nobody has approved it yet; "
        "penguin campaign approve q4 --by WHO --tenant acme"
    )
    assert _state(database, acme) == ("draft", 0)

    with tenant_transaction(database.app, acme) as conn:
        cf.approve(conn, "q4", "legal", _now())
    assert _control(database, "launch").success
    assert _state(database, acme) == ("active", 1)


def test_a_launch_whose_template_fails_for_a_contact_fails_its_run_naming_step_and_contact(
    database, acme
):
    text = "Hello{% if email == 'bad@example.com' %}{{ 1 / 0 }}{% endif %}"
    _apply(
        database, acme, _campaign(steps=[{"id": "intro", "email": {"subject": "Hi", "text": text}}])
    )
    _add_contacts(database, acme, ["ann@example.com", "bad@example.com"])
    description = _failure(_control(database, "launch"))
    assert description.startswith("launch acme/q4 refused: step intro"), description
    assert "ZeroDivisionError: division by zero" in description
    assert description.endswith("(contact bad@example.com)")
    assert _state(database, acme) == ("draft", 0)


@pytest.mark.parametrize(
    ("tenant", "campaign", "action", "expected"),
    [
        ("nobody", "q4", "launch", "no tenant named 'nobody'"),
        (
            "acme",
            "nope",
            "launch",
            "launch acme/nope refused: no campaign named 'nope' in this tenant",
        ),
        (
            "acme",
            "q4",
            "pause",
            "pause acme/q4 refused: the campaign is draft; only an active one can be paused",
        ),
        (
            "acme",
            "q4",
            "resume",
            "resume acme/q4 refused: the campaign is draft; only a paused one can be resumed",
        ),
    ],
)
def test_a_refused_action_fails_its_run_naming_what_is_wrong(
    database, acme, tenant, campaign, action, expected
):
    _apply(database, acme, _campaign())
    description = _failure(_control(database, action, campaign=campaign, tenant=tenant))
    assert expected in description, description
    assert _state(database, acme) == ("draft", 0)


# -- the due-sends sensor ------------------------------------------------------------------------


def _tick(database: Database, instance: dg.DagsterInstance):
    with dg.build_sensor_context(instance=instance, resources=_resources(database)) as context:
        return due_sends_sensor(context)


def test_new_members_of_a_launched_campaigns_list_make_the_sensor_ask_for_a_send_run(
    database, acme, smtp_faults
):
    server = smtp_faults.start()
    steps = [
        {"id": "intro", "email": {"subject": "Hi", "text": "Hello"}},
        {"id": "pause", "wait": "3d"},
        {"id": "again", "email": {"subject": "Re", "text": "Again"}},
    ]
    _apply(database, acme, _campaign(steps=steps))
    _add_contacts(database, acme, ["ann@example.com"])
    assert _control(database, "launch").success
    with dg.instance_for_test() as instance:
        assert isinstance(_tick(database, instance), dg.RunRequest)
        _send_run(database, instance, server.port)
        # Ann waits three days: the campaign is active with nothing due.
        assert isinstance(_tick(database, instance), dg.SkipReason)

        # Contacts added to the list later (`penguin upload`): nothing is enrolled for them
        # yet, and the send run is where they are enrolled, so the sensor must ask for one.
        _add_contacts(database, acme, ["bob@example.com", "cy@example.com"])
        request = _tick(database, instance)
        assert isinstance(request, dg.RunRequest), request
        assert request.run_key == _tick(database, instance).run_key  # a repeated tick is harmless
        result = _send_run(database, instance, server.port)
        assert _metadata(result)["enrolled"] == 2 and _metadata(result)["sent"] == 2
        assert isinstance(_tick(database, instance), dg.SkipReason)

        # Members a pass would not enroll (suppressed, unsubscribed) ask for nothing: else
        # every finished run would be followed by another that does nothing.
        _add_contacts(database, acme, ["dee@example.com"])
        with tenant_transaction(database.app, acme) as conn:
            conn.execute(
                store.SUPPRESS,
                {"email": "DEE@example.com", "reason": "manual", "detail": None, "now": _now()},
            )
            add_contact(conn, "eve@example.com", list_id=_list_id(conn), status="unsubscribed")
        assert isinstance(_tick(database, instance), dg.SkipReason)


def test_a_scheduled_campaign_whose_start_has_come_makes_the_sensor_ask_for_a_send_run(
    database, acme, smtp_faults
):
    start = _now() + timedelta(days=1)
    schedule = {
        "strategy": "scheduled",
        "start_at": start.strftime("%Y-%m-%dT%H:%M"),
        "window": "00:00-24:00",
        "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
    }
    _apply(database, acme, _campaign(schedule=schedule))
    _add_contacts(database, acme, ["ann@example.com"])
    assert _control(database, "launch").success
    assert _state(database, acme)[0] == "scheduled"
    with dg.instance_for_test() as instance:
        assert isinstance(_tick(database, instance), dg.SkipReason)
        with tenant_transaction(database.app, acme) as conn:  # a day later
            conn.execute(sa.text("update app.campaigns set start_at = now() - interval '1 minute'"))
        request = _tick(database, instance)
        assert isinstance(request, dg.RunRequest), request
        # The run starts the campaign, enrolls its list and sends: nothing else is needed.
        metadata = _metadata(_send_run(database, instance, smtp_faults.start().port))
        assert (metadata["campaigns_activated"], metadata["enrolled"], metadata["sent"]) == (
            1,
            1,
            1,
        )
        assert isinstance(_tick(database, instance), dg.SkipReason)


# -- send_due_job ---------------------------------------------------------------------------------


def _code_location(database: Database, smtp_port: int | None = None) -> dg.Definitions:
    """The code location of orchestration/definitions.py, its resources pointed at the test's
    database and SMTP server."""
    return dg.Definitions.merge(
        ingestion.defs,
        sending.defs,
        campaigns.defs,
        analytics.defs,
        dg.Definitions(resources=_resources(database, smtp_port), executor=dg.in_process_executor),
    )


def _send_run(
    database: Database, instance: dg.DagsterInstance, smtp_port: int, *, marts: bool = False
) -> dg.ExecuteInProcessResult:
    """One run of send_due_job (its engine pass); with `marts`, then the refresh run of the
    marts the freshness sensor would ask for."""
    location = _code_location(database, smtp_port)
    result = location.resolve_job_def("send_due_job").execute_in_process(
        instance=instance, raise_on_error=False
    )
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    if marts:
        today = datetime.now(UTC).date()
        refresh = location.resolve_job_def("analytics_job").execute_in_process(
            instance=instance,
            tags=analytics.refresh_tags((today, today), datetime.now(UTC)),
            raise_on_error=False,
        )
        assert refresh.success, [e.message for e in refresh.all_events if e.is_failure]
    return result


def _metadata(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    [materialization] = [
        m for m in result.get_asset_materialization_events() if m.asset_key.path == ["sent_emails"]
    ]
    metadata = materialization.step_materialization_data.materialization.metadata
    return {k: v.value for k, v in metadata.items()}


def _zone_at(local_hour: int, now: datetime) -> str:
    """A fixed-offset IANA zone whose local time is about `local_hour` at `now`."""
    ahead = (local_hour - now.hour) % 24
    if ahead > 14:  # zones run from UTC-12 to UTC+14
        ahead -= 24
    return f"Etc/GMT{-ahead:+d}"  # POSIX signs: Etc/GMT-3 is three hours ahead of UTC


_OUTCOMES = sa.text(
    """
    select
        (select count(*) from app.campaign_contacts) as enrollments,
        (select count(*) from app.contacts where 'reached' = any(tags)) as reached,
        (select json_object_agg(status, n) from
            (select status, count(*) as n from app.sent_emails group by status) s) as messages,
        (select json_object_agg(exit_reason, n) from
            (select exit_reason, count(*) as n from app.campaign_contacts
             where status = 'exited' group by exit_reason) e) as exits,
        (select json_object_agg(wait_reason, n) from
            (select wait_reason, count(*) as n from app.campaign_contacts
             where status = 'active' and wait_reason is not null group by wait_reason) w) as waits
    """
)


_MART = sa.text(
    """
    -- no events here: every hard bounce is a refusal at RCPT, which `sent` includes
    select sum(sent) - sum(bounced_hard), sum(bounced_hard), sum(failed), sum(unknown),
           sum(pending)
    from analytics_marts.campaign_daily where campaign_name = 'q4'
    """
)


def test_a_send_run_carries_the_counts_of_its_pass_as_the_database_has_them(
    database, acme, smtp_faults
):
    server = smtp_faults.start()
    now = _now()
    awake, asleep = _zone_at(6, now), _zone_at(18, now)  # inside and outside 00:00-12:00
    schedule = {"window": "00:00-12:00", "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]}
    steps = [
        {"id": "mark", "action": {"tag": "reached"}},
        {"id": "intro", "email": {"subject": "Hi {{ first_name }}", "text": "Hello"}},
    ]
    _apply(database, acme, _campaign(schedule=schedule, steps=steps))
    answers = ["ann", "bob", "r550-cy", "d554-dee", "drop-after-data-eve", "r451-fay", "ivy"]
    _add_contacts(database, acme, [f"{a}@example.com" for a in answers], timezone=awake)
    _add_contacts(database, acme, ["gus@example.com", "hal@example.com"], timezone=asleep)
    assert _control(database, "launch").success
    # After the launch: a new member (enrolled by the run itself) and a suppression.
    _add_contacts(database, acme, ["jo@example.com"], timezone=awake)
    with tenant_transaction(database.app, acme) as conn:
        conn.execute(
            store.SUPPRESS,
            {"email": "ivy@example.com", "reason": "manual", "detail": None, "now": now},
        )

    with dg.instance_for_test() as instance:
        result = _send_run(database, instance, server.port, marts=True)
    metadata = _metadata(result)

    # What the pass did, one item of each kind: the metadata an operator reads on the run.
    assert metadata["enrolled"] == 1
    assert metadata["advanced"] == 9  # everyone but ivy passed the action step
    assert (metadata["sent"], metadata["retrying"], metadata["bounced"]) == (3, 1, 1)
    assert (metadata["failed"], metadata["unknown"]) == (1, 1)
    assert (metadata["deferred"], metadata["deferred_by_reason"]) == (2, {"window": 2})
    assert metadata["exited"] == 3
    assert metadata["exited_by_reason"] == {
        "bounced": 1,
        "message rejected": 1,
        "suppressed": 1,
    }
    # ... and what the database holds after it.
    with tenant_transaction(database.app, acme) as conn:
        db = conn.execute(_OUTCOMES).one()
    assert db.enrollments == 9 + metadata["enrolled"]
    assert db.reached == metadata["advanced"]
    assert db.messages == {
        "sent": metadata["sent"],
        "queued": metadata["retrying"],
        "bounced": metadata["bounced"],
        "failed": metadata["failed"],
        "unknown": metadata["unknown"],
    }
    assert db.exits == metadata["exited_by_reason"]
    assert db.waits == {**metadata["deferred_by_reason"], "retry": metadata["retrying"]}
    assert sorted(server.recipients()) == [
        "ann@example.com",
        "bob@example.com",
        "drop-after-data-eve@example.com",
        "jo@example.com",
    ]
    # The marts refreshed after it count the same messages.
    with database.analytics.connect() as conn:
        mart = conn.execute(_MART).one()
    assert tuple(mart) == (
        metadata["sent"],
        metadata["bounced"],
        metadata["failed"],
        metadata["unknown"],
        metadata["retrying"],
    )


# -- the run queue --------------------------------------------------------------------------------


def _queued(instance: dg.DagsterInstance, name: str, status=dg.DagsterRunStatus.QUEUED) -> str:
    """A run of job `name` as the webserver or a sensor submits it (with its job's tags)."""
    from dagster._core.remote_origin import InProcessCodeLocationOrigin, RemoteRepositoryOrigin
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

    from orchestration.definitions import defs

    job = defs.resolve_job_def(name)
    origin = RemoteRepositoryOrigin(
        InProcessCodeLocationOrigin(
            LoadableTargetOrigin(module_name="orchestration.definitions"),
            location_name="penguinmails",
        ),
        "__repository__",
    ).get_job_origin(name)
    config = (
        {"ops": {"control_campaign": {"config": {"campaign": "q4", "action": "pause"}}}}
        if name == campaign_control_job.name
        else None
    )
    run = instance.create_run_for_job(
        job_def=job, run_config=config, status=status, tags=job.tags, remote_job_origin=origin
    )
    return run.run_id


def test_the_daemons_run_queue_starts_one_send_run_at_a_time(tmp_path):
    """The limit is in the instance `penguin up` writes (dagster.yaml), where the daemon
    reads it: the queue, not only the sensor, keeps send runs from overlapping."""
    from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import (
        QueuedRunCoordinatorDaemon,
    )

    from engine.config import Settings
    from engine.runtime import prepare_dagster_home

    settings = Settings(home=tmp_path / "home", database_url=None)
    prepare_dagster_home(settings)
    with dg.DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        config = instance.get_concurrency_config()
        limits = config.run_queue_config.tag_concurrency_limits
        assert {"key": "penguin/sends", "limit": 1} in limits
        # Every job that sends carries the tag (the upload job sends too).
        for name in ("send_due_job", "ingest_upload_job"):
            assert _job_tags(name)["penguin/sends"] == "send", name

        names = {}
        for name in ("send_due_job", "ingest_upload_job", "send_due_job", "campaign_control_job"):
            names[_queued(instance, name)] = name
        daemon = QueuedRunCoordinatorDaemon(interval_seconds=1)
        dequeued = daemon._get_runs_to_dequeue(instance, config, fixed_iteration_time=None)
        # The first send run starts; the other two wait; campaign control is not held back.
        assert [names[run.run_id] for run in dequeued] == ["send_due_job", "campaign_control_job"]

    # While a send run is under way, a queued one waits and other runs start.
    settings = Settings(home=tmp_path / "busy", database_url=None)
    prepare_dagster_home(settings)
    with dg.DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        config = instance.get_concurrency_config()
        _queued(instance, "send_due_job", status=dg.DagsterRunStatus.STARTED)
        names = {_queued(instance, name): name for name in ("send_due_job", "campaign_control_job")}
        daemon = QueuedRunCoordinatorDaemon(interval_seconds=1)
        dequeued = daemon._get_runs_to_dequeue(instance, config, fixed_iteration_time=None)
        assert [names[run.run_id] for run in dequeued] == ["campaign_control_job"]


def _job_tags(name: str) -> dict[str, str]:
    from orchestration.definitions import defs

    return dict(defs.resolve_job_def(name).tags)
