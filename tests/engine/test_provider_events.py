"""Provider event imports against the real database: messages the engine sent over SMTP, then
SES, SendGrid, Mailgun and Postmark exports of their events imported as batches."""

from __future__ import annotations

import csv
import json
import os
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from engine.campaigns import Step
from engine.db import tenant_transaction
from engine.ingest.rejects import KEPT_REJECTS
from engine.provider_events import EventImportError, import_events, records
from engine.provider_events import inbox as event_inbox
from engine.provider_events.imports import rejects
from engine.sending.scheduler import send_due
from tests.engine import provider_samples as samples
from tests.factories import seed_tenant


def _sent(database, smtp_server, now, tmp_path, name="acme", steps=None):
    tenant = seed_tenant(database, name, now, tmp_path, steps=steps)
    assert send_due(database.app, smtp_server.server(), now, tenants=[tenant.tenant_id]).sent == 3
    with tenant_transaction(database.app, tenant.tenant_id) as conn:
        ids = dict(
            conn.execute(sa.text("select recipient_email, message_id from app.sent_emails"))
            .tuples()
            .all()
        )
    return tenant, ids


def _query(database, tenant, sql, **params):
    with tenant_transaction(database.app, tenant.tenant_id) as conn:
        return conn.execute(sa.text(sql), params).all()


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text(samples.json_lines(records), encoding="utf-8")
    return path


@pytest.mark.parametrize("provider", sorted(samples.SAMPLES))
def test_each_providers_events_are_recorded_on_their_messages_with_their_effects(
    database, smtp_server, now, tmp_path, provider
):
    tenant, ids = _sent(database, smtp_server, now, tmp_path)
    a, b, c = sorted(ids)
    write = samples.SAMPLES[provider]
    later = now + timedelta(minutes=30)
    records = [
        write("delivered", ids[a], a, now + timedelta(seconds=2)),
        write("open", ids[a], a, later),
        write("click", ids[a], a, later + timedelta(seconds=40)),
        write("delivered", ids[b], b, now + timedelta(seconds=2)),
        write("complaint", ids[b], b, later),
        write("bounce", ids[c], c, now + timedelta(seconds=3)),
    ]
    result = import_events(
        database.app, tenant.tenant_id, _write(tmp_path / "events.jsonl", records), provider, now
    )
    assert (result.total, result.imported, result.rejected, result.duplicates) == (6, 6, 0, 0)
    assert result.event_counts == {
        "bounce": 1,
        "click": 1,
        "complaint": 1,
        "delivered": 2,
        "open": 1,
    }
    events = _query(
        database,
        tenant,
        "select e.event_type, m.recipient_email, e.is_machine, e.payload ->> 'hard' as hard "
        "from app.email_events e join app.sent_emails m on m.id = e.sent_email_id "
        "order by m.recipient_email, e.occurred_at, e.event_type",
    )
    assert [tuple(e) for e in events] == [
        ("delivered", a, False, None),
        ("open", a, False, None),
        ("click", a, False, None),
        ("delivered", b, False, None),
        ("complaint", b, False, None),
        ("bounce", c, False, "true"),
    ]
    assert sorted(_query(database, tenant, "select email, reason from app.suppressions")) == [
        (b, "complaint"),
        (c, "bounce"),
    ]
    statuses = dict(_query(database, tenant, "select email, status from app.contacts"))
    assert statuses == {a: "active", b: "complained", c: "bounced"}
    assert _query(
        database, tenant, "select recipient_email from app.sent_emails where status = 'bounced'"
    ) == [(c,)]
    assert result.suppressed == 2

    # An unsubscribe, in a second file: suppressed, and the next pass sends it nothing.
    second = [write("unsubscribe", ids[a], a, later + timedelta(hours=1))]
    again = import_events(
        database.app, tenant.tenant_id, _write(tmp_path / "more.jsonl", second), provider, now
    )
    assert (again.imported, again.suppressed) == (1, 1)
    assert dict(_query(database, tenant, "select email, status from app.contacts"))[a] == (
        "unsubscribed"
    )


def test_csv_and_json_array_exports_and_sns_envelopes_are_read(
    database, smtp_server, now, tmp_path
):
    tenant, ids = _sent(database, smtp_server, now, tmp_path)
    a, b, c = sorted(ids)
    at = now + timedelta(hours=1)
    # A JSON array of SNS notifications (SES through SNS).
    array = tmp_path / "ses.json"
    array.write_text(json.dumps([samples.ses("open", ids[a], a, at, sns=True)]), encoding="utf-8")
    # CSV, nested fields as dotted columns (Mailgun's event-data flattened).
    flat = tmp_path / "mailgun.csv"
    with flat.open("w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(["id", "event", "timestamp", "recipient", "message.headers.message-id"])
        out.writerow(["mg-1", "delivered", at.timestamp(), b, ids[b]])
        out.writerow(["mg-2", "opened", at.timestamp() + 60, b, ids[b]])
    # A line holding a whole webhook body (SendGrid posts arrays).
    body = tmp_path / "sendgrid.jsonl"
    body.write_text(
        json.dumps([samples.sendgrid("delivered", ids[c], c, at)]) + "\n", encoding="utf-8"
    )
    for path, provider, imported in (
        (array, "ses", 1),
        (flat, "mailgun", 2),
        (body, "sendgrid", 1),
    ):
        result = import_events(database.app, tenant.tenant_id, path, provider, now)
        assert (result.imported, result.rejected) == (imported, 0), provider
    kinds = _query(
        database,
        tenant,
        "select m.recipient_email, e.event_type from app.email_events e "
        "join app.sent_emails m on m.id = e.sent_email_id order by 1, e.occurred_at",
    )
    assert [tuple(k) for k in kinds] == [
        (a, "open"),
        (b, "delivered"),
        (b, "open"),
        (c, "delivered"),
    ]


def test_events_naming_only_the_providers_id_match_through_what_earlier_records_taught(
    database, smtp_server, now, tmp_path
):
    """SendGrid's opens and clicks carry no smtp-id: their sg_message_id is matched to the
    message its delivered event named, in the same file or in a later import."""
    tenant, ids = _sent(database, smtp_server, now, tmp_path)
    a, b, _ = sorted(ids)
    at = now + timedelta(hours=1)
    first = [
        samples.sendgrid("open", ids[a], a, at + timedelta(minutes=5)),  # before its delivered
        samples.sendgrid("delivered", ids[a], a, at),
        samples.sendgrid("delivered", ids[b], b, at),
    ]
    result = import_events(
        database.app, tenant.tenant_id, _write(tmp_path / "1.jsonl", first), "sendgrid", now
    )
    assert (result.imported, result.unmatched) == (3, 0)
    later = [samples.sendgrid("click", ids[b], b, at + timedelta(hours=2))]
    result = import_events(
        database.app, tenant.tenant_id, _write(tmp_path / "2.jsonl", later), "sendgrid", now
    )
    assert (result.imported, result.unmatched) == (1, 0)
    clicks = _query(
        database,
        tenant,
        "select m.recipient_email from app.email_events e join app.sent_emails m "
        "on m.id = e.sent_email_id where e.event_type = 'click'",
    )
    assert clicks == [(b,)]


def test_duplicates_and_repeated_files_are_one_event(database, smtp_server, now, tmp_path):
    tenant, ids = _sent(database, smtp_server, now, tmp_path)
    a = sorted(ids)[0]
    at = now + timedelta(hours=1)
    opened = samples.mailgun("open", ids[a], a, at)
    path = _write(tmp_path / "events.jsonl", [opened, opened])  # twice in one file
    result = import_events(database.app, tenant.tenant_id, path, "mailgun", now)
    assert (result.imported, result.duplicates) == (1, 1)
    again = import_events(database.app, tenant.tenant_id, path, "mailgun", now)
    assert again.already_imported and again.import_id == result.import_id
    # The same event in another export (with an older, out-of-order one beside it).
    earlier = samples.mailgun("delivered", ids[a], a, now + timedelta(seconds=1))
    other = _write(tmp_path / "other.jsonl", [opened, earlier])
    result = import_events(database.app, tenant.tenant_id, other, "mailgun", now)
    assert (result.imported, result.duplicates) == (1, 1)
    forced = import_events(database.app, tenant.tenant_id, path, "mailgun", now, force=True)
    assert (forced.already_imported, forced.imported, forced.duplicates) == (False, 0, 2)
    kinds = _query(database, tenant, "select event_type from app.email_events order by occurred_at")
    assert [k.event_type for k in kinds] == ["delivered", "open"]


def test_bad_records_are_rejected_with_their_line_and_reason_and_the_rest_imported(
    database, smtp_server, now, tmp_path
):
    tenant, ids = _sent(database, smtp_server, now, tmp_path)
    other, other_ids = _sent(database, smtp_server, now, tmp_path, name="globex")
    a = sorted(ids)[0]
    stranger = sorted(other_ids)[0]
    at = now + timedelta(hours=1)
    lines = [
        json.dumps(samples.postmark("open", ids[a], a, at)),
        "{not json",
        json.dumps(samples.postmark("open", "nobody@nowhere.example", a, at)),
        # another tenant's Message-ID: not ours to see, so no message
        json.dumps(samples.postmark("open", other_ids[stranger], stranger, at)),
        json.dumps({"RecordType": "Open", "ReceivedAt": at.isoformat()}),  # names no message
        json.dumps({"RecordType": "Open", "MessageID": "x", "ReceivedAt": "yesterday"}),
        json.dumps({"RecordType": "Inbound", "MessageID": "x"}),  # not an event we record
        "",
        json.dumps(["=cmd|' /C calc'!A0"]),  # a formula, in a reject's raw text
        "x" * (2 << 20),  # a line over the record limit
        json.dumps(samples.postmark("delivered", ids[a], a, at)),
    ]
    path = tmp_path / "postmark.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = import_events(database.app, tenant.tenant_id, path, "postmark", now)
    assert (result.total, result.imported, result.skipped, result.rejected, result.unmatched) == (
        10,
        2,
        1,
        7,
        2,
    )
    with tenant_transaction(database.app, tenant.tenant_id) as conn:
        found = [(r.line_number, r.reason) for r in rejects(conn, result.import_id)]
    assert found[0] == (2, "not JSON (Expecting property name enclosed in double quotes)")
    assert found[1] == (
        3,
        "no message of this tenant has Message-ID <nobody@nowhere.example> "
        "(nor is postmark message 883953f4-nobody@n known)",
    )
    assert found[2][0] == 4 and "no message of this tenant has Message-ID" in found[2][1]
    assert found[3] == (5, "it names no message (no Message-ID and no provider message id)")
    assert found[4] == (6, "ReceivedAt 'yesterday' is not a time")
    assert found[5] == (9, "a record must be a JSON object, not str")
    assert found[6] == (10, "the line is over 1,024 KiB: no event is that long")
    # The other tenant's message got nothing.
    assert _query(database, other, "select count(*) from app.email_events") == [(0,)]


def test_a_file_that_cannot_be_read_fails_its_batch_and_writes_nothing(
    database, smtp_server, now, tmp_path
):
    tenant, ids = _sent(database, smtp_server, now, tmp_path)
    empty = tmp_path / "empty.json"
    empty.write_text("  \n", encoding="utf-8")
    with pytest.raises(EventImportError, match=r"^empty.json: the file is empty$"):
        import_events(database.app, tenant.tenant_id, empty, "ses", now)
    broken = tmp_path / "broken.json"
    a = sorted(ids)[0]
    broken.write_text(json.dumps([samples.ses("open", ids[a], a, now)])[:-1], encoding="utf-8")
    with pytest.raises(EventImportError, match="starts as a JSON array but is not valid JSON"):
        import_events(database.app, tenant.tenant_id, broken, "ses", now)
    with pytest.raises(EventImportError, match="unknown format 'sparkpost'; one of ses, sendgrid"):
        import_events(database.app, tenant.tenant_id, broken, "sparkpost", now)
    with pytest.raises(EventImportError, match="missing.json: no such file"):
        import_events(database.app, tenant.tenant_id, tmp_path / "missing.json", "ses", now)
    statuses = _query(
        database, tenant, "select file_name, status, error from app.event_imports order by 1"
    )
    assert [(r.file_name, r.status) for r in statuses] == [
        ("broken.json", "failed"),
        ("empty.json", "failed"),
    ]
    assert _query(database, tenant, "select count(*) from app.email_events") == [(0,)]
    # Fixed and imported again: the failed batch is resumed, not a second one.
    broken.write_text(json.dumps([samples.ses("open", ids[a], a, now)]), encoding="utf-8")
    result = import_events(database.app, tenant.tenant_id, broken, "ses", now)
    assert result.imported == 1


def test_third_soft_bounce_within_a_week_is_hard_and_machine_opens_are_flagged(
    database, smtp_server, now, tmp_path
):
    three = [
        Step("email", subject="One", body_text="first"),
        Step("wait", wait=timedelta(days=1)),
        Step("email", subject="Two", body_text="second"),
        Step("wait", wait=timedelta(days=1)),
        Step("email", subject="Three", body_text="third"),
    ]
    tenant, _ = _sent(database, smtp_server, now, tmp_path, steps=three)
    for day in (1, 2):
        send_due(database.app, smtp_server.server(), now + timedelta(days=day, minutes=1))
    a = "acme0@example.com"
    sent = _query(
        database,
        tenant,
        "select message_id, sent_at from app.sent_emails where recipient_email = :a "
        "order by queued_at",
        a=a,
    )
    assert len(sent) == 3
    at = now + timedelta(days=2, hours=1)
    soft = [
        samples.ses("bounce", m.message_id, a, at + timedelta(minutes=i), hard=False)
        for i, m in enumerate(sent[:2])
    ]
    import_events(database.app, tenant.tenant_id, _write(tmp_path / "1.jsonl", soft), "ses", now)
    assert _query(database, tenant, "select email from app.suppressions") == []
    third = [samples.ses("bounce", sent[2].message_id, a, at + timedelta(minutes=5), hard=False)]
    result = import_events(
        database.app, tenant.tenant_id, _write(tmp_path / "2.jsonl", third), "ses", now
    )
    assert result.suppressed == 1
    assert _query(database, tenant, "select email, reason from app.suppressions") == [(a, "bounce")]

    b = "acme1@example.com"
    first = _query(
        database,
        tenant,
        "select message_id, sent_at from app.sent_emails "
        "where recipient_email = :b order by queued_at limit 1",
        b=b,
    )[0]
    opens = [
        samples.sendgrid("open", first.message_id, b, first.sent_at + timedelta(seconds=2)),
        samples.sendgrid("open", first.message_id, b, at, agent="Mozilla/5.0"),
        samples.sendgrid("open", first.message_id, b, at + timedelta(hours=1))
        | {"sg_machine_open": True, "sg_event_id": "sg-machine"},
        samples.sendgrid("open", first.message_id, b, at + timedelta(hours=2))
        | {"sg_event_id": "sg-human"},
        samples.sendgrid("delivered", first.message_id, b, first.sent_at),
    ]
    opens[1]["sg_event_id"] = "sg-apple"
    import_events(
        database.app, tenant.tenant_id, _write(tmp_path / "opens.jsonl", opens), "sendgrid", now
    )
    reasons = _query(
        database,
        tenant,
        "select machine_reason from app.email_events where event_type = 'open' "
        "order by occurred_at",
    )
    assert [r.machine_reason for r in reasons] == [
        "open within seconds of sending",
        "Apple Mail Privacy Protection",
        "SendGrid: machine open",
        None,
    ]


def test_records_postgresql_or_python_cannot_hold_are_rejected_alone(
    database, smtp_server, now, tmp_path
):
    """What an attacker or a broken exporter writes: NUL, lone surrogates, NaN, huge ids and
    numbers, deep nesting, fields of another shape, times out of range. Each is its own reject
    (or stored made safe); the good records around them are imported."""
    tenant, ids = _sent(database, smtp_server, now, tmp_path)
    a, b, _ = sorted(ids)
    at = now + timedelta(hours=1)

    def grid(**fields):
        return json.dumps(samples.sendgrid("open", ids[a], a, at) | fields)

    ses_bounce = samples.ses("bounce", ids[b], b, at)
    lines = [
        json.dumps(samples.sendgrid("delivered", ids[a], a, at)),  # good
        grid(sg_event_id="nul\u0000key", useragent="agent\u0000x"),  # stored without the NUL
        grid(sg_event_id="\ud800lone"),  # stored with the surrogate replaced
        '{"event": "open", "timestamp": NaN, "sg_event_id": "nan"}',
        grid(sg_event_id="k" * 10_000),  # kept as its digest
        grid(sg_message_id="m" * 10_000, sg_event_id="long-id"),
        json.dumps(ses_bounce | {"bounce": ses_bounce["bounce"] | {"bouncedRecipients": 5}}),
        json.dumps(ses_bounce | {"mail": ses_bounce["mail"] | {"headers": 5}}),
        "[" * 5000 + "]" * 5000,
        '{"event": "open", "timestamp": ' + "9" * 5000 + "}",
        grid(timestamp="2026-01-01T00:00:00+20:00", sg_event_id="offset"),
        grid(timestamp="9999-12-31T23:00:00-05:00", sg_event_id="far"),
        grid(timestamp="0001-01-01T00:00:00+00:00", sg_event_id="old"),
        grid(timestamp=True, sg_event_id="bool"),
        "x\u0000y not json",
        json.dumps(samples.sendgrid("delivered", ids[b], b, at)),  # good
    ]
    path = tmp_path / "hostile.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
    result = import_events(database.app, tenant.tenant_id, path, "sendgrid", now)
    total = result.imported + result.duplicates + result.skipped + result.rejected
    assert total == result.total
    with tenant_transaction(database.app, tenant.tenant_id) as conn:
        found = {r.line_number: r.reason for r in rejects(conn, result.import_id)}
    # (line 11's +20:00 is a time PostgreSQL would refuse as written: it is stored in UTC)
    assert set(found) == {4, 6, 7, 8, 9, 10, 12, 13, 14, 15}, found
    assert found[4].startswith("not JSON (NaN is not a JSON value)")
    assert found[6] == "its message id is over 998 characters: no message's"
    assert found[9] == "not JSON (nested too deeply)"
    assert found[12].endswith("is not a time") and found[13].endswith("between 1970 and 2100")
    assert found[14] == "timestamp 'True' is not a time"
    assert found[7] == found[8] == "no event: not a SendGrid event"  # SES's, read as SendGrid's
    assert result.imported == 6  # lines 1, 2, 3, 5, 11 and 16
    keys = _query(
        database,
        tenant,
        "select dedup_key, payload ->> 'user_agent' as agent "
        "from app.email_events order by occurred_at, id",
    )
    assert any(k.agent == "agent\\x00x" for k in keys)  # shown: control characters escaped
    assert all(len(k.dedup_key) < 300 for k in keys)

    ses = tmp_path / "ses-hostile.jsonl"
    ses.write_text("\n".join(lines[6:8]) + "\n", encoding="utf-8")
    shapes = import_events(database.app, tenant.tenant_id, ses, "ses", now)
    # bouncedRecipients 5: a bounce naming no recipient; headers 5: no Message-ID there, so
    # matched by SES's own id, which the first record taught.
    assert (shapes.imported, shapes.rejected) == (2, 0)


def test_json_lines_of_webhook_bodies_may_start_with_an_array(database, smtp_server, now, tmp_path):
    tenant, ids = _sent(database, smtp_server, now, tmp_path)
    a, b, _ = sorted(ids)
    at = now + timedelta(hours=1)
    path = tmp_path / "bodies.jsonl"
    path.write_text(
        json.dumps([samples.sendgrid("delivered", ids[a], a, at)])
        + "\n"
        + json.dumps([samples.sendgrid("delivered", ids[b], b, at)])
        + "\n",
        encoding="utf-8",
    )
    result = import_events(database.app, tenant.tenant_id, path, "sendgrid", now)
    assert (result.total, result.imported) == (2, 2)


def _tenant(database, name="acme"):
    from engine.tenants import create_tenant

    tenant_id, _ = create_tenant(database.owner, name)
    return tenant_id


def test_only_an_imports_first_rejects_are_kept_and_every_one_is_counted(database, now, tmp_path):
    tenant_id = _tenant(database)
    export = tmp_path / "garbage.json"
    export.write_text(json.dumps([{}] * (KEPT_REJECTS + 50), indent=1), encoding="utf-8")
    result = import_events(database.app, tenant_id, export, "ses", now)
    assert (result.total, result.rejected, result.imported) == (
        KEPT_REJECTS + 50,
        KEPT_REJECTS + 50,
        0,
    )
    with tenant_transaction(database.app, tenant_id) as conn:
        kept = rejects(conn, result.import_id)
    assert len(kept) == KEPT_REJECTS
    assert [r.line_number for r in kept[:2]] == [1, 2] and kept[-1].line_number == KEPT_REJECTS
    assert kept[0].reason == "no eventType or notificationType: not an SES event"


@pytest.mark.parametrize("layout", ["array", "lines", "csv"])
def test_a_file_over_its_layouts_cap_is_refused_before_it_is_read(
    database, now, tmp_path, monkeypatch, layout
):
    tenant_id = _tenant(database)
    text = {"array": "[\n{}\n]", "lines": "{}\n", "csv": "event,timestamp\nopen,1\n"}[layout]
    export = tmp_path / "big.export"
    export.write_text(text + " " * 2000, encoding="utf-8")
    monkeypatch.setitem(records.MAX_FILE_BYTES, layout, 1024)
    with pytest.raises(EventImportError) as caught:
        import_events(database.app, tenant_id, export, "sendgrid", now)
    what = {"array": "a JSON array", "lines": "a JSON-lines file", "csv": "a CSV file"}[layout]
    assert str(caught.value).startswith(
        f"big.export: the file is 2.0 KiB; {what} of events may be at most 1 KiB; "
    )
    with tenant_transaction(database.app, tenant_id) as conn:
        assert conn.execute(sa.text("select count(*) from app.event_imports")).scalar() == 0


@pytest.mark.timeout(60)  # a FIFO opened for reading would block: fail, not hang
def test_a_link_or_a_fifo_in_the_events_inbox_is_moved_aside_unread(database, now, tmp_path):
    _tenant(database)
    root = database.settings.event_files
    outside = tmp_path / "passwd"
    outside.write_text("root:x:0:0:root:/root:/bin/bash\n", encoding="utf-8")
    folder = event_inbox.inbox_folder(root, "acme", "ses")
    folder.mkdir(parents=True)
    (folder / "events.json").symlink_to(outside)
    os.mkfifo(folder / "pipe.json")
    outcomes = {
        item.path.name: event_inbox.process_file(database.app, root, item, now)
        for item in event_inbox.pending_files(root)
    }
    assert outcomes["events.json"].error == (
        "it is a symbolic link; the inbox takes only files: copy the file itself in"
    )
    assert outcomes["pipe.json"].error == (
        "it is a named pipe (FIFO), not a file; the inbox takes only regular files"
    )
    assert outside.read_text().startswith("root:")
    assert list(folder.iterdir()) == []
    with database.owner.connect() as conn:
        assert conn.execute(sa.text("select count(*) from app.event_imports")).scalar() == 0


@pytest.mark.timeout(60)  # reading a FIFO put in the file's place would block: fail, not hang
def test_the_file_checked_is_the_file_read_whatever_its_path_names_meanwhile(
    database, now, tmp_path, monkeypatch
):
    """A file replaced after its checks (by a FIFO, a bigger or another file) is not read:
    the import reads the file it opened, checked and hashed."""
    from engine.provider_events import imports

    tenant_id = _tenant(database)
    export = tmp_path / "events.json"
    export.write_text("{not json\n", encoding="utf-8")
    checked = imports._digest

    def digest_then_replace(*args):
        answer = checked(*args)
        export.unlink()
        os.mkfifo(export)
        return answer

    monkeypatch.setattr(imports, "_digest", digest_then_replace)
    result = import_events(database.app, tenant_id, export, "ses", now)
    assert (result.total, result.rejected) == (1, 1)
    with tenant_transaction(database.app, tenant_id) as conn:
        assert [r.raw_row for r in rejects(conn, result.import_id)] == ["{not json"]


def test_an_inbox_file_replaced_by_a_link_after_its_check_is_not_followed(database, now, tmp_path):
    _tenant(database)
    root = database.settings.event_files
    outside = tmp_path / "passwd"
    outside.write_text("{root:x:0:0:root:/root:/bin/bash\n", encoding="utf-8")
    folder = event_inbox.inbox_folder(root, "acme", "ses")
    folder.mkdir(parents=True)
    (folder / "events.json").write_text("{}\n", encoding="utf-8")
    (item,) = event_inbox.pending_files(root)  # checked: a regular file
    (folder / "events.json").unlink()
    (folder / "events.json").symlink_to(outside)
    outcome = event_inbox.process_file(database.app, root, item, now)
    assert outcome.error == (
        "events.json: is a symbolic link, not a file; give the path of a regular file"
    )
    with database.owner.connect() as conn:
        assert conn.execute(sa.text("select count(*) from app.event_import_rejects")).scalar() == 0
