"""Inbound mail through the real path: the engine sends into the project's SMTP sink, replies,
bounces and complaints arrive there over SMTP, a poll of its Maildir applies them."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa

from engine.campaigns import Step
from engine.db import tenant_transaction
from engine.mailboxes import inbound
from engine.mailboxes.maildir import poll_maildir
from engine.senders import SenderConfigError, SmtpServer, create_sender
from engine.sending.scheduler import send_due
from engine.smtp_sink import SmtpSink
from tests.conftest import free_port
from tests.engine import mail_samples as samples
from tests.factories import seed_tenant

SENDER = "sales@acme.example"
STEPS = [
    Step("email", subject="One", body_text="first"),
    Step("wait", wait=timedelta(days=1)),
    Step("email", subject="Two", body_text="second"),
]


@pytest.fixture
def sink(tmp_path) -> Iterator[SmtpSink]:
    with SmtpSink(tmp_path / "maildir", port=free_port()) as running:
        yield running


def _deliver(sink: SmtpSink, text: str, to: str = SENDER, mail_from: str = "") -> None:
    with smtplib.SMTP(sink.host, sink.port) as smtp:
        smtp.sendmail(mail_from, [to], text)


def _sent(database, sink, now, tmp_path, steps=STEPS):
    tenant = seed_tenant(database, "acme", now, tmp_path, steps=steps)
    report = send_due(database.app, SmtpServer(sink.host, sink.port), now)
    assert report.sent == 3
    with tenant_transaction(database.app, tenant.tenant_id) as conn:
        ids = dict(
            conn.execute(sa.text("select recipient_email, message_id from app.sent_emails"))
            .tuples()
            .all()
        )
    return tenant, ids


def _query(database, tenant, sql):
    with tenant_transaction(database.app, tenant.tenant_id) as conn:
        return conn.execute(sa.text(sql)).all()


def _events(database, tenant):
    return _query(
        database,
        tenant,
        "select e.event_type, m.recipient_email, e.payload ->> 'hard' as hard "
        "from app.email_events e left join app.sent_emails m on m.id = e.sent_email_id "
        "order by e.occurred_at, e.id",
    )


def test_replies_bounces_and_complaints_are_applied_to_the_messages_they_answer(
    database, sink, now, tmp_path
):
    tenant, ids = _sent(database, sink, now, tmp_path)
    a, b, c = "acme0@example.com", "acme1@example.com", "acme2@example.com"
    _deliver(sink, samples.reply(SENDER, a, ids[a]))
    _deliver(sink, samples.auto_reply(SENDER, b, ids[b]))
    _deliver(sink, samples.postfix_dsn(SENDER, c, ids[c], hard=True))
    _deliver(sink, samples.arf_complaint(SENDER, b, ids[b]))
    report = poll_maildir(database.app, sink.maildir)
    # The engine's three outgoing copies were read and skipped.
    assert (report.read, report.inbound, report.unmatched, report.errors) == (7, 4, 0, [])
    assert dict(report.applied) == {"reply": 1, "auto_reply": 1, "bounce": 1, "complaint": 1}
    events = sorted((e.event_type, e.recipient_email) for e in _events(database, tenant))
    assert events == [
        ("auto_reply", b),
        ("bounce", c),
        ("complaint", b),
        ("reply", a),
    ]
    assert sorted(_query(database, tenant, "select email, reason from app.suppressions")) == [
        (b, "complaint"),
        (c, "bounce"),
    ]
    statuses = dict(_query(database, tenant, "select email, status from app.contacts"))
    assert statuses == {a: "active", b: "complained", c: "bounced"}
    bounced = _query(
        database, tenant, "select recipient_email from app.sent_emails where status = 'bounced'"
    )
    assert [r.recipient_email for r in bounced] == [c]

    # The next pass: the replier's sequence ends (stop_on_reply: contact), the suppressed ones'
    # too; the auto-reply stopped nothing, but b complained, so nobody gets the second email.
    later = now + timedelta(days=2)
    send_due(database.app, SmtpServer(sink.host, sink.port), later)
    send_due(database.app, SmtpServer(sink.host, sink.port), later)
    reasons = dict(
        _query(
            database,
            tenant,
            "select c.email, cc.exit_reason from app.campaign_contacts cc "
            "join app.contacts c on c.id = cc.contact_id",
        )
    )
    assert reasons == {a: "replied", b: "contact complained", c: "contact bounced"}
    assert [m["Subject"] for m in sink.messages() if m["Subject"] == "Two"] == []


def test_an_auto_reply_does_not_stop_the_sequence(database, sink, now, tmp_path):
    tenant, ids = _sent(database, sink, now, tmp_path)
    a = "acme0@example.com"
    _deliver(sink, samples.auto_reply(SENDER, a, ids[a], german=True))
    assert dict(poll_maildir(database.app, sink.maildir).applied) == {"auto_reply": 1}
    later = now + timedelta(days=2)
    send_due(database.app, SmtpServer(sink.host, sink.port), later)
    send_due(database.app, SmtpServer(sink.host, sink.port), later)
    seconds = sorted(m["To"] for m in sink.messages() if m["Subject"] == "Two")
    assert seconds == ["acme0@example.com", "acme1@example.com", "acme2@example.com"]


def test_a_reply_under_stop_on_reply_company_stops_everyone_at_the_domain(
    database, sink, now, tmp_path
):
    tenant, ids = _sent(database, sink, now, tmp_path)
    with tenant_transaction(database.app, tenant.tenant_id) as conn:
        conn.execute(sa.text("update app.campaign_settings set stop_on_reply = 'company'"))
    a = "acme0@example.com"  # everyone of the list is at example.com
    _deliver(sink, samples.reply(SENDER, a, ids[a]))
    poll_maildir(database.app, sink.maildir)
    later = now + timedelta(days=2)
    send_due(database.app, SmtpServer(sink.host, sink.port), later)
    reasons = sorted(
        r.exit_reason
        for r in _query(database, tenant, "select exit_reason from app.campaign_contacts")
    )
    assert reasons == ["company replied", "company replied", "replied"]


def test_three_soft_bounces_of_different_messages_within_a_week_count_as_hard(
    database, sink, now, tmp_path
):
    three = [
        Step("email", subject="One", body_text="first"),
        Step("wait", wait=timedelta(days=1)),
        Step("email", subject="Two", body_text="second"),
        Step("wait", wait=timedelta(days=1)),
        Step("email", subject="Three", body_text="third"),
    ]
    tenant, _ = _sent(database, sink, now, tmp_path, steps=three)
    for day in (1, 2):
        later = now + timedelta(days=day, minutes=1)
        send_due(database.app, SmtpServer(sink.host, sink.port), later)
    a = "acme0@example.com"
    ids = [
        r.message_id
        for r in _query(
            database,
            tenant,
            f"select message_id from app.sent_emails where recipient_email = '{a}' "
            "order by queued_at",
        )
    ]
    assert len(ids) == 3
    # One message's repeated delay warnings are one soft bounce.
    for n in range(3):
        dsn = samples.postfix_dsn(SENDER, a, ids[0], hard=False)
        _deliver(sink, dsn.replace("Message-ID: <dsn-", f"Message-ID: <dsn-{n}-"))
    poll_maildir(database.app, sink.maildir)
    assert _query(database, tenant, "select email from app.suppressions") == []
    for original in ids[1:]:  # the second and third message soft-bounce too: hard
        _deliver(sink, samples.postfix_dsn(SENDER, a, original, hard=False))
    poll_maildir(database.app, sink.maildir)
    # Whichever of the two is applied second is the third message's bounce: hard.
    assert sorted(e.hard for e in _events(database, tenant)) == ["false"] * 4 + ["true"]
    assert _query(database, tenant, "select email, reason from app.suppressions") == [(a, "bounce")]


def test_bounces_of_other_mtas_and_an_unsubscribe_email_match_by_reference_or_address(
    database, sink, now, tmp_path
):
    tenant, ids = _sent(database, sink, now, tmp_path)
    a, b, c = "acme0@example.com", "acme1@example.com", "acme2@example.com"
    _deliver(sink, samples.exim_bounce(SENDER, a, ids[a]))
    _deliver(sink, samples.qmail_bounce(SENDER, b, "not-one-of-ours@elsewhere.example"))
    _deliver(sink, samples.unsubscribe(SENDER, c))  # the mailto link: no reference at all
    report = poll_maildir(database.app, sink.maildir)
    assert (dict(report.applied), report.unmatched) == ({"bounce": 2, "unsubscribe": 1}, 1)
    # The qmail bounce names a message that is not ours: read, but it records nothing (a bounce
    # is anyone's to write); the unsubscribe email comes from an address we mailed.
    assert sorted(_query(database, tenant, "select email, reason from app.suppressions")) == [
        (a, "bounce"),
        (c, "unsubscribe"),
    ]
    assert sorted((e.event_type, e.recipient_email) for e in _events(database, tenant)) == [
        ("bounce", a),
        ("unsubscribe", c),
    ]


def test_one_message_that_fails_is_rolled_back_alone(database, sink, now, tmp_path, monkeypatch):
    tenant, ids = _sent(database, sink, now, tmp_path)
    for address, original in ids.items():
        _deliver(sink, samples.reply(SENDER, address, original))
    real = inbound.apply_many
    replies = [p for p in (sink.maildir / "new").iterdir() if b"In-Reply-To" in p.read_bytes()]
    doomed = replies[0].name

    def one_fails(conn, messages):
        result = real(conn, messages)  # its rows are written, then it fails: rolled back
        if any(m.source_key == doomed for m in messages):
            raise ValueError("this message's own trouble")
        return result

    monkeypatch.setattr(inbound, "apply_many", one_fails)
    report = poll_maildir(database.app, sink.maildir)
    assert (dict(report.applied), len(report.errors)) == ({"reply": 2}, 1), report.errors
    assert "this message's own trouble" in report.errors[0] and doomed in report.errors[0]
    monkeypatch.setattr(inbound, "apply_many", real)
    retried = poll_maildir(database.app, sink.maildir)
    assert (dict(retried.applied), retried.already) == ({"reply": 1}, 2)
    assert sorted(e.recipient_email for e in _events(database, tenant)) == sorted(ids)


def test_each_message_is_applied_once_even_after_a_poll_that_died_midway(
    database, sink, now, tmp_path, monkeypatch
):
    tenant, ids = _sent(database, sink, now, tmp_path)
    for address, original in ids.items():
        _deliver(sink, samples.reply(SENDER, address, original))
    real = inbound.apply_many

    def dying(conn, messages):
        real(conn, messages)  # the batch is written, then the process dies before its commit
        raise KeyboardInterrupt

    monkeypatch.setattr(inbound, "apply_many", dying)
    with pytest.raises(KeyboardInterrupt):
        poll_maildir(database.app, sink.maildir)
    monkeypatch.setattr(inbound, "apply_many", real)
    assert _events(database, tenant) == []  # its transaction died with it: nothing half-done
    first = poll_maildir(database.app, sink.maildir)
    again = poll_maildir(database.app, sink.maildir, cursor=first.cursor)
    assert (dict(first.applied), first.already) == ({"reply": 3}, 0)
    assert (dict(again.applied), again.already) == ({}, 3)
    assert sorted(e.recipient_email for e in _events(database, tenant)) == sorted(ids)


def test_mail_for_another_tenants_sender_is_applied_in_that_tenant_only(
    database, sink, now, tmp_path
):
    acme, ids = _sent(database, sink, now, tmp_path)
    other = seed_tenant(database, "other", now, tmp_path, enroll=False)
    a = "acme0@example.com"
    # A reply naming acme's message, sent to other's sender: other cannot see acme's message.
    _deliver(sink, samples.reply("sales@other.example", a, ids[a]), to="sales@other.example")
    report = poll_maildir(database.app, sink.maildir)
    assert report.unmatched == 1
    assert _events(database, acme) == []
    assert _query(database, other, "select kind, sent_email_id from app.inbound_messages") == [
        ("reply", None)
    ]


def test_mail_to_the_ascii_form_of_an_internationalized_sender_address_is_its_own(
    database, sink, now
):
    """A sender account stored as `sales@bücher.example` gets its mail at
    `sales@xn--bcher-kva.example` from every server without SMTPUTF8: it was read as mail for
    nobody, and the tenant never saw its replies."""
    from engine.tenants import create_tenant

    tenant, _ = create_tenant(database.owner, "buecher")
    with tenant_transaction(database.app, tenant) as conn:
        create_sender(conn, "sales@bücher.example", now=now)
    idna_form = "Sales@xn--bcher-kva.example"
    _deliver(sink, samples.reply(idna_form, "ann@example.com", None, subject="Hi"), to=idna_form)
    assert poll_maildir(database.app, sink.maildir).inbound == 1
    with tenant_transaction(database.app, tenant) as conn:
        read = conn.execute(sa.text("select from_address from app.inbound_messages")).all()
    assert read == [("ann@example.com",)]


def test_penguin_mail_poll_applies_the_sinks_mail_once_and_says_what_it_did(
    database, now, tmp_path, env
):
    from tests.factories import run_penguin

    with SmtpSink(database.settings.maildir, port=free_port()) as home_sink:
        tenant, ids = _sent(database, home_sink, now, tmp_path)
        a = "acme0@example.com"
        _deliver(home_sink, samples.reply(SENDER, a, ids[a]))
        _deliver(home_sink, samples.postfix_dsn(SENDER, a, ids[a]))
    first = run_penguin(["mail", "poll"], env)
    assert first.returncode == 0, first.stderr
    assert "5 to sender accounts" not in first.stdout
    assert "2 to sender accounts: 1 bounce, 1 reply" in first.stdout
    again = run_penguin(["mail", "poll"], env)
    assert "nothing new; 2 applied before" in again.stdout
    assert sorted(e.event_type for e in _events(database, tenant)) == ["bounce", "reply"]


def test_forged_bounces_and_complaints_suppress_nobody(database, sink, now, tmp_path):
    """Nor do they count against a message: a report naming a's message but b as the failed
    recipient or the complainer is about no message of ours (it recorded a hard bounce and
    a complaint on a's message, which the marts counted)."""
    tenant, ids = _sent(database, sink, now, tmp_path)
    a, b = "acme0@example.com", "acme1@example.com"
    # From anyone, naming b as failed but no message of ours; and a DSN and a report about
    # a's message that name b as the failed recipient and as the complainer.
    _deliver(sink, samples.postfix_dsn(SENDER, b, "forged@evil.example"))
    _deliver(sink, samples.postfix_dsn(SENDER, b, ids[a]))
    _deliver(sink, samples.arf_complaint(SENDER, b, ids[a]))
    report = poll_maildir(database.app, sink.maildir)
    assert (dict(report.applied), report.suppressed) == ({"bounce": 2, "complaint": 1}, 0)
    assert report.unmatched == 3
    assert _events(database, tenant) == []
    assert _query(database, tenant, "select email from app.suppressions") == []
    statuses = {r.status for r in _query(database, tenant, "select status from app.contacts")}
    assert statuses == {"active"}


def test_an_unsubscribe_email_from_an_address_never_mailed_suppresses_nobody(
    database, sink, now, tmp_path
):
    """Its `From:` is anyone's to write: only an address this tenant has mailed can ask."""
    tenant, ids = _sent(database, sink, now, tmp_path)
    a = "acme0@example.com"
    _deliver(sink, samples.unsubscribe(SENDER, "ceo@victim.example"))  # no contact at all
    colleague = samples.reply(SENDER, "colleague@example.com", None, subject="unsubscribe")
    _deliver(sink, colleague)  # a forwarded copy's reader, not mailed by us
    report = poll_maildir(database.app, sink.maildir)
    assert (dict(report.applied), report.unmatched, report.suppressed) == (
        {"unsubscribe": 2},
        2,
        0,
    )
    assert _query(database, tenant, "select email from app.suppressions") == []
    assert _events(database, tenant) == []
    statuses = dict(_query(database, tenant, "select email, status from app.contacts"))
    assert statuses[a] == "active"


def test_a_bounce_or_complaint_naming_no_message_of_ours_records_nothing(
    database, sink, now, tmp_path
):
    """Not even an event on the address's latest message: a DSN or ARF is anyone's to write,
    and one that names no message of ours by its Message-ID says nothing about any."""
    tenant, _ = _sent(database, sink, now, tmp_path)
    a, b = "acme0@example.com", "acme1@example.com"
    _deliver(sink, samples.postfix_dsn(SENDER, a, "unknown@evil.example", hard=True))
    for n in range(3):  # nor do soft ones count towards three
        dsn = samples.postfix_dsn(SENDER, b, f"unknown-{n}@evil.example", hard=False)
        _deliver(sink, dsn)
    _deliver(sink, samples.arf_complaint(SENDER, b, "unknown@evil.example"))
    report = poll_maildir(database.app, sink.maildir)
    assert (dict(report.applied), report.unmatched) == ({"bounce": 4, "complaint": 1}, 5)
    assert _events(database, tenant) == []
    assert _query(database, tenant, "select email from app.suppressions") == []
    statuses = {r.status for r in _query(database, tenant, "select status from app.sent_emails")}
    assert statuses == {"sent"}
    read = _query(database, tenant, "select kind, sent_email_id from app.inbound_messages")
    assert sorted(read) == [("bounce", None)] * 4 + [("complaint", None)]  # read once, no more


def _exit_reasons(database, sink, tenant, now):
    send_due(database.app, SmtpServer(sink.host, sink.port), now + timedelta(days=2))
    return sorted(
        str(r.exit_reason)
        for r in _query(database, tenant, "select exit_reason from app.campaign_contacts")
    )


def test_a_reply_without_references_stops_its_contact_but_not_its_company(
    database, sink, now, tmp_path
):
    """Matched by its `From:` alone, which anyone can forge, a reply cannot end every
    enrollment at the company (`stop_on_reply: company`): only the replier's own."""
    tenant, _ = _sent(database, sink, now, tmp_path)
    with tenant_transaction(database.app, tenant.tenant_id) as conn:
        conn.execute(sa.text("update app.campaign_settings set stop_on_reply = 'company'"))
    _deliver(sink, samples.reply(SENDER, "acme0@example.com", None, subject="Hi"))
    assert poll_maildir(database.app, sink.maildir).unmatched == 0  # matched by address
    assert _exit_reasons(database, sink, tenant, now) == ["None", "None", "replied"]


def test_a_reply_the_receiving_server_authenticated_stops_its_company_without_references(
    database, sink, now, tmp_path
):
    tenant, _ = _sent(database, sink, now, tmp_path)
    with tenant_transaction(database.app, tenant.tenant_id) as conn:
        conn.execute(sa.text("update app.campaign_settings set stop_on_reply = 'company'"))
    stamped = "Authentication-Results: mx.acme.example; dmarc=pass header.from=example.com\n"
    reply = samples.reply(SENDER, "acme0@example.com", None, subject="Hi", stamped=stamped)
    _deliver(sink, reply)
    poll_maildir(database.app, sink.maildir, authserv_ids=["mx.acme.example"])
    assert _exit_reasons(database, sink, tenant, now) == [
        "company replied",
        "company replied",
        "replied",
    ]


def test_a_sender_address_of_another_tenant_is_refused_and_its_mail_stays_there(
    database, sink, now, tmp_path
):
    """`sender add` of an address another tenant has: refused, naming the fix and not the
    tenant; the mail sent to that address stays the first tenant's."""
    acme, ids = _sent(database, sink, now, tmp_path)
    other = seed_tenant(database, "other", now, tmp_path, enroll=False)
    with tenant_transaction(database.app, other.tenant_id) as conn:
        with pytest.raises(SenderConfigError) as refused:
            create_sender(conn, "Sales@ACME.example", now=now)
        conn.execute(sa.text("select 1"))  # the caller's transaction goes on
    assert str(refused.value) == (
        "sender address sales@acme.example is already a sender account of another tenant: an "
        "address belongs to one tenant, which receives its replies; use an address of your own "
        "(or have the operator remove it from the tenant that has it)"
    )
    a = "acme0@example.com"
    _deliver(sink, samples.reply(SENDER, a, ids[a]))
    _deliver(sink, samples.unsubscribe(SENDER, "acme1@example.com"))
    poll_maildir(database.app, sink.maildir)
    assert _query(database, other, "select kind from app.inbound_messages") == []
    assert _query(database, other, "select email from app.sender_accounts") == [
        ("sales@other.example",)
    ]
    assert sorted(e.event_type for e in _events(database, acme)) == ["reply", "unsubscribe"]


def test_an_addresss_messages_are_found_through_the_index_under_row_level_security(
    database, sink, now, tmp_path
):
    """A reply without references and an address's soft bounces look messages up by address:
    the stored key is the index's condition for the application role (lower() of the column
    never could be, under row-level security: it is not leakproof)."""
    tenant, _ = _sent(database, sink, now, tmp_path)
    with tenant_transaction(database.app, tenant.tenant_id) as conn:
        conn.execute(sa.text("set local enable_seqscan = off"))
        plan = conn.execute(
            sa.text(
                "explain select id from app.sent_emails m "
                "where m.tenant_id = app.current_tenant_id() "
                "and m.recipient_key = lower(cast(:address as text)) "
                "order by queued_at desc limit 1"
            ),
            {"address": "ACME0@example.com"},
        ).scalars()
        conditions = [line for line in plan if "Index Cond" in line]
    assert any("(recipient_key = " in line for line in conditions), conditions


def test_a_batch_makes_the_effects_of_its_messages_in_their_order(database, sink, now, tmp_path):
    """An unsubscribe applied by address, then a hard bounce applied by contact, in one batch:
    the first one's effect stands, as if they were applied one after the other."""
    tenant, ids = _sent(database, sink, now, tmp_path)
    a = "acme0@example.com"
    _deliver(sink, samples.unsubscribe(SENDER, a))
    _deliver(sink, samples.postfix_dsn(SENDER, a, ids[a], hard=True))
    report = poll_maildir(database.app, sink.maildir)
    assert dict(report.applied) == {"unsubscribe": 1, "bounce": 1}
    assert _query(database, tenant, "select email, reason from app.suppressions") == [
        (a, "unsubscribe")
    ]
    statuses = dict(_query(database, tenant, "select email, status from app.contacts"))
    assert statuses[a] == "unsubscribed"
