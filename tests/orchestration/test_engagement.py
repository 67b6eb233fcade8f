"""Inbound mail through Dagster: the mailbox sensor's cursor and run keys, the poll run."""

from __future__ import annotations

import json

import dagster as dg

from engine.senders import SmtpServer
from engine.sending.scheduler import send_due
from engine.smtp_sink import SmtpSink
from orchestration import engagement
from tests.conftest import free_port
from tests.engine import mail_samples as samples
from tests.engine.test_mailboxes import SENDER, _deliver, _events
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
        since = request.run_config["ops"]["inbound_mail"]["config"]["since"]
        assert since == 0 and json.loads(cursor)["since"] > 0
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
