"""Inbound mail through Dagster: the mailbox sensor's cursor and run keys, the poll run."""

from __future__ import annotations

import json
import os
import time
from datetime import timedelta

import dagster as dg

from engine.provider_events import inbox as event_inbox
from engine.senders import SmtpServer
from engine.sending.scheduler import send_due
from engine.smtp_sink import SmtpSink
from orchestration import engagement
from tests.conftest import free_port
from tests.engine import mail_samples as samples
from tests.engine import provider_samples
from tests.engine.test_mailboxes import SENDER, _deliver, _events
from tests.engine.test_provider_events import _query, _sent
from tests.factories import seed_tenant
from tests.orchestration.test_ingestion import _resources


def _tick(database, instance, cursor=None):
    with dg.build_sensor_context(
        instance=instance, resources=_resources(database), cursor=cursor
    ) as context:
        return engagement.mailbox_sensor(context), context.cursor


def test_new_mail_is_requested_once_and_its_run_applies_it(database, now, tmp_path):
    with dg.instance_for_test() as instance:
        nothing, cursor = _tick(database, instance)
        assert isinstance(nothing, dg.SkipReason)
        with SmtpSink(database.settings.maildir, port=free_port()) as sink:
            tenant = seed_tenant(database, "acme", now, tmp_path)
            send_due(database.app, SmtpServer(sink.host, sink.port), now)
            message_id = next(m["Message-ID"] for m in sink.messages()).strip("<>")
            _deliver(sink, samples.reply(SENDER, "acme0@example.com", message_id))
        request, cursor = _tick(database, instance, cursor)
        assert isinstance(request, dg.RunRequest) and request.run_key.startswith("mail:")
        again, _ = _tick(database, instance, cursor)
        assert isinstance(again, dg.SkipReason)  # nothing newer than the cursor
        # From where the last complete poll got to (none yet: the whole Maildir).
        assert request.run_config["ops"]["inbound_mail"]["config"] == {"since": -1, "imap": False}
        assert json.loads(cursor)["since"] > 0
        result = dg.materialize(
            [engagement.inbound_mail],
            resources=_resources(database),
            instance=instance,
            run_config=request.run_config,
        )
        assert result.success
        metadata = result.asset_materializations_for_node("inbound_mail")[0].metadata
        assert metadata["applied"].value == {"reply": 1}
        assert metadata["read"].value == 4  # three outgoing copies and the reply
    assert [e.event_type for e in _events(database, tenant)] == ["reply"]


def test_a_file_arriving_within_the_cursors_second_is_still_requested(database, tmp_path):
    new = database.settings.maildir / "new"
    new.mkdir(parents=True)
    (new / "1796000000.M99999P1Q1.host").write_text("x")
    with dg.instance_for_test() as instance:
        first, cursor = _tick(database, instance)
        assert isinstance(first, dg.RunRequest)
        # Same second, a name that sorts before the first (microseconds are not zero-padded).
        (new / "1796000000.M100000P1Q2.host").write_text("y")
        second, cursor = _tick(database, instance, cursor)
        assert isinstance(second, dg.RunRequest) and second.run_key != first.run_key
        third, _ = _tick(database, instance, cursor)
        assert isinstance(third, dg.SkipReason)


def _event_tick(database, instance):
    with dg.build_sensor_context(instance=instance, resources=_resources(database)) as context:
        return engagement.event_inbox_sensor(context)


def _settled(path):
    os.utime(path, (time.time() - 60, time.time() - 60))
    return path


def test_an_export_dropped_in_the_events_inbox_is_imported_by_its_run_and_moved_on(
    database, smtp_server, now, tmp_path
):
    tenant, ids = _sent(database, smtp_server, now, tmp_path)
    a = sorted(ids)[0]
    export = tmp_path / "opens.jsonl"
    export.write_text(
        provider_samples.json_lines(
            [provider_samples.sendgrid("delivered", ids[a], a, now + timedelta(minutes=1))]
        ),
        encoding="utf-8",
    )
    root = database.settings.event_files
    _settled(event_inbox.drop(root, export, "acme", "sendgrid"))
    wrong = event_inbox.inbox_folder(root, "acme", "sparkpost")  # no such provider
    wrong.mkdir(parents=True)
    (wrong / "x.json").write_text("[]")
    _settled(wrong / "x.json")
    with dg.instance_for_test() as instance:
        requests = _event_tick(database, instance)
        assert sorted(r.run_key.rsplit(":", 2)[0] for r in requests) == [
            "events:acme/sendgrid/opens.jsonl",
            "events:acme/sparkpost/x.json",
        ]
        for request in requests:
            result = dg.materialize(
                [engagement.provider_events],
                resources=_resources(database),
                instance=instance,
                run_config=request.run_config,
            )
            assert result.success
        assert isinstance(_event_tick(database, instance), dg.SkipReason)
    assert _query(database, tenant, "select event_type from app.email_events") == [("delivered",)]
    processed = list((root / "processed" / "acme" / "sendgrid").iterdir())
    assert [p.name.endswith("-opens.jsonl") for p in processed] == [True]
    failed = sorted(p.name for p in (root / "failed" / "acme" / "sparkpost").iterdir())
    assert len(failed) == 2 and failed[1].endswith("x.json.error.txt")
    error = (root / "failed" / "acme" / "sparkpost" / failed[1]).read_text()
    assert "its folder 'sparkpost' names no provider" in error


def test_a_poll_run_that_fails_leaves_its_mail_to_the_next_run(
    database, now, tmp_path, monkeypatch
):
    with SmtpSink(database.settings.maildir, port=free_port()) as sink:
        tenant = seed_tenant(database, "acme", now, tmp_path)
        send_due(database.app, SmtpServer(sink.host, sink.port), now)
        message_id = next(m["Message-ID"] for m in sink.messages()).strip("<>")
        _deliver(sink, samples.reply(SENDER, "acme0@example.com", message_id))

    def run():
        return dg.materialize(
            [engagement.inbound_mail],
            resources=_resources(database),
            instance=instance,
            run_config={"ops": {"inbound_mail": {"config": {"imap": False}}}},
            raise_on_error=False,
        )

    def down(*args, **kwargs):
        raise ConnectionError("the database went away")

    with dg.instance_for_test() as instance:
        with monkeypatch.context() as patched:
            patched.setattr(engagement, "poll_maildir", down)
            assert not run().success
        assert not database.settings.maildir_cursor.exists()  # moved on not at all
        result = run()
        assert result.success
        metadata = result.asset_materializations_for_node("inbound_mail")[0].metadata
        assert (metadata["since"].value, metadata["applied"].value) == (0, {"reply": 1})
        # The next run starts where this one got to (its last arrival second), not at 0.
        later = run().asset_materializations_for_node("inbound_mail")[0].metadata
        assert later["since"].value > 0 and later["applied"].value == {}
    assert [e.event_type for e in _events(database, tenant)] == ["reply"]


def test_a_run_config_cannot_name_a_file_outside_its_inbox(database, tmp_path):
    from orchestration import ingestion

    victim = tmp_path / "victim" / "etc" / "passwd.txt"
    victim.parent.mkdir(parents=True)
    victim.write_text("root:x:0:0")
    for asset, op, path in (
        (engagement.provider_events, "provider_events", str(victim)),
        (engagement.provider_events, "provider_events", "../../../victim/etc/passwd.txt"),
        (ingestion.uploads, "uploads", "../../victim/etc/passwd.txt"),
        (ingestion.uploads, "uploads", "acme/leads"),
    ):
        with dg.instance_for_test() as instance:
            result = dg.materialize(
                [asset],
                resources=_resources(database),
                instance=instance,
                run_config={"ops": {op: {"config": {"path": path}}}},
                raise_on_error=False,
            )
        assert not result.success, path
        failure = result.failure_data_for_node(op).error.message
        assert (
            "config path:" in failure
            and "not <tenant>/<folder>/<file>" in failure
            or ("leads out of" in failure)
        ), failure
    assert victim.read_text() == "root:x:0:0"  # not moved, not read


def test_a_poll_starts_again_at_a_message_the_database_could_not_take(
    database, now, tmp_path, monkeypatch
):
    import sqlalchemy as sa

    from engine.mailboxes import inbound

    with SmtpSink(database.settings.maildir, port=free_port()) as sink:
        seed_tenant(database, "acme", now, tmp_path)
        send_due(database.app, SmtpServer(sink.host, sink.port), now)
        message_id = next(m["Message-ID"] for m in sink.messages()).strip("<>")
        _deliver(sink, samples.reply(SENDER, "acme0@example.com", message_id))

    def away(conn, messages):
        raise sa.exc.OperationalError("insert", {}, ConnectionError("server closed"))

    with dg.instance_for_test() as instance:
        monkeypatch.setattr(inbound, "apply_many", away)
        result = dg.materialize(
            [engagement.inbound_mail],
            resources=_resources(database),
            instance=instance,
            run_config={"ops": {"inbound_mail": {"config": {"imap": False}}}},
        )
    assert result.success
    metadata = result.asset_materializations_for_node("inbound_mail")[0].metadata
    assert metadata["errors"].value == 1
    # The reply's second is where the next poll starts: it is read again.
    newest = max(p.name for p in (database.settings.maildir / "new").iterdir())
    assert json.loads(database.settings.maildir_cursor.read_text())["since"] <= int(
        newest.split(".")[0]
    )
