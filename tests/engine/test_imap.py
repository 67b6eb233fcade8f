"""Sender accounts' IMAP mailboxes against a real IMAP server (dovecot): incremental, once,
resumable, one account's trouble its own."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from engine.db import tenant_transaction
from engine.mailboxes import inbound
from engine.mailboxes.imap import poll_imap
from engine.senders import SenderConfigError, set_mailbox
from engine.sending.scheduler import send_due
from tests.engine import mail_samples as samples
from tests.factories import seed_tenant

SENDER = "sales@acme.example"
PASSWORD_ENV = "PENGUIN_SMTP_ACME__IMAP"
ENV = {PASSWORD_ENV: "imap-secret"}


def _sent(database, smtp_server, now, tmp_path, imap_server):
    tenant = seed_tenant(database, "acme", now, tmp_path)
    assert send_due(database.app, smtp_server.server(), now).sent == 3
    imap_server.add_user(SENDER, "imap-secret")
    with tenant_transaction(database.app, tenant.tenant_id) as conn:
        set_mailbox(
            conn,
            SENDER,
            host="127.0.0.1",
            port=imap_server.port,
            security="none",
            username=SENDER,
            password_env=PASSWORD_ENV,
        )
        ids = dict(
            conn.execute(sa.text("select recipient_email, message_id from app.sent_emails"))
            .tuples()
            .all()
        )
    return tenant, ids


def _events(database, tenant):
    with tenant_transaction(database.app, tenant.tenant_id) as conn:
        return conn.execute(
            sa.text(
                "select e.event_type, m.recipient_email from app.email_events e "
                "left join app.sent_emails m on m.id = e.sent_email_id order by e.id"
            )
        ).all()


def test_replies_and_bounces_in_an_imap_mailbox_are_applied_once_and_incrementally(
    database, smtp_server, now, tmp_path, imap_server
):
    tenant, ids = _sent(database, smtp_server, now, tmp_path, imap_server)
    a, b = "acme0@example.com", "acme1@example.com"
    imap_server.deliver(SENDER, "imap-secret", samples.reply(SENDER, a, ids[a]))
    imap_server.deliver(SENDER, "imap-secret", samples.postfix_dsn(SENDER, b, ids[b]))
    first = poll_imap(database.app, env=ENV)
    assert (dict(first.applied), first.errors) == ({"reply": 1, "bounce": 1}, [])
    again = poll_imap(database.app, env=ENV)
    assert (again.read, dict(again.applied)) == (0, {})  # the cursor: nothing fetched again
    imap_server.deliver(SENDER, "imap-secret", samples.auto_reply(SENDER, a, ids[a]))
    third = poll_imap(database.app, env=ENV)
    assert (third.read, dict(third.applied)) == (1, {"auto_reply": 1})
    assert sorted(_events(database, tenant)) == [("auto_reply", a), ("bounce", b), ("reply", a)]
    # Read-only: the messages are still unseen in the mailbox.
    client = imap_server.client(SENDER, "imap-secret")
    client.select_folder("INBOX")
    assert len(client.search(["UNSEEN"])) == 3
    client.logout()


def test_a_poll_that_died_midway_resumes_after_the_last_message_it_applied(
    database, smtp_server, now, tmp_path, imap_server, monkeypatch
):
    tenant, ids = _sent(database, smtp_server, now, tmp_path, imap_server)
    for address, original in ids.items():
        imap_server.deliver(SENDER, "imap-secret", samples.reply(SENDER, address, original))
    real, calls = inbound.apply_many, []

    def dying(conn, messages):
        calls.extend(m.source_key for m in messages)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(conn, messages)

    monkeypatch.setattr(inbound, "apply_many", dying)
    with pytest.raises(KeyboardInterrupt):
        poll_imap(database.app, env=ENV)
    monkeypatch.setattr(inbound, "apply_many", real)
    resumed = poll_imap(database.app, env=ENV)
    assert (resumed.read, dict(resumed.applied)) == (2, {"reply": 2})
    assert sorted(r for _, r in _events(database, tenant)) == sorted(ids)


def test_a_folder_recreated_with_a_new_uidvalidity_is_read_again_and_applied_once(
    database, smtp_server, now, tmp_path, imap_server
):
    tenant, ids = _sent(database, smtp_server, now, tmp_path, imap_server)
    a = "acme0@example.com"
    with tenant_transaction(database.app, tenant.tenant_id) as conn:
        conn.execute(sa.text("update app.sender_accounts set imap_folder = 'Replies'"))
    reply = samples.reply(SENDER, a, ids[a])
    imap_server.deliver(SENDER, "imap-secret", reply, folder="Replies")
    assert dict(poll_imap(database.app, env=ENV).applied) == {"reply": 1}
    client = imap_server.client(SENDER, "imap-secret")
    client.delete_folder("Replies")
    client.logout()
    imap_server.deliver(SENDER, "imap-secret", reply, folder="Replies")
    again = poll_imap(database.app, env=ENV)
    assert (again.read, again.already, dict(again.applied)) == (1, 1, {})
    assert _events(database, tenant) == [("reply", a)]


def test_one_accounts_trouble_is_said_and_ends_only_its_own_poll(
    database, smtp_server, now, tmp_path, imap_server
):
    tenant, ids = _sent(database, smtp_server, now, tmp_path, imap_server)
    a = "acme0@example.com"
    imap_server.deliver(SENDER, "imap-secret", samples.reply(SENDER, a, ids[a]))
    other = seed_tenant(database, "other", now, tmp_path, enroll=False)
    with tenant_transaction(database.app, other.tenant_id) as conn:
        set_mailbox(
            conn,
            "sales@other.example",
            host="127.0.0.1",
            port=imap_server.port,
            security="none",
            username="sales@other.example",
            password_env="PENGUIN_SMTP_OTHER__IMAP",
        )
    wrong = {**ENV, "PENGUIN_SMTP_OTHER__IMAP": "not-the-password"}
    report = poll_imap(database.app, env=wrong)
    assert dict(report.applied) == {"reply": 1}
    assert len(report.errors) == 1 and "sales@other.example" in report.errors[0]
    unset = poll_imap(database.app, env={})
    assert any("PENGUIN_SMTP_ACME__IMAP (its IMAP password) is not set" in e for e in unset.errors)


def test_a_mailbox_cannot_name_another_tenants_password_or_log_in_in_clear_text(
    database, now, tmp_path
):
    tenant = seed_tenant(database, "acme", now, tmp_path, enroll=False)
    with tenant_transaction(database.app, tenant.tenant_id) as conn:
        with pytest.raises(SenderConfigError, match="PENGUIN_SMTP_ACME__"):
            set_mailbox(
                conn, SENDER, host="imap.example", username="u", password_env="PENGUIN_SMTP_X__Y"
            )
        with pytest.raises(SenderConfigError, match="clear text"):
            set_mailbox(conn, SENDER, host="imap.example", username="u", security="none")
        with pytest.raises(SenderConfigError, match="no sender account"):
            set_mailbox(conn, "nobody@acme.example", host="imap.example", username="u")


def test_a_message_that_cannot_be_applied_does_not_stop_the_mailbox(
    database, smtp_server, now, tmp_path, imap_server, monkeypatch
):
    tenant, ids = _sent(database, smtp_server, now, tmp_path, imap_server)
    for address, original in sorted(ids.items()):
        imap_server.deliver(SENDER, "imap-secret", samples.reply(SENDER, address, original))
    real = inbound.apply_many

    def first_fails(conn, messages):
        if any(m.source_key.endswith(":1") for m in messages):
            raise ValueError("its own trouble")
        return real(conn, messages)

    monkeypatch.setattr(inbound, "apply_many", first_fails)
    report = poll_imap(database.app, env=ENV)
    assert dict(report.applied) == {"reply": 2}
    assert len(report.errors) == 1 and "UID 1: not applied: its own trouble" in report.errors[0]
    again = poll_imap(database.app, env=ENV)
    assert again.read == 0  # moved past it, said once
    assert len(_events(database, tenant)) == 2


def test_a_mailbox_two_accounts_share_gives_each_tenant_only_its_own_accounts_mail(
    database, smtp_server, now, tmp_path, imap_server
):
    """Another tenant's account pointed at the same mailbox (the operator gave it the login)
    reads only what is addressed to its own address, not acme's replies."""
    acme, ids = _sent(database, smtp_server, now, tmp_path, imap_server)
    other = seed_tenant(database, "other", now, tmp_path, enroll=False)
    with tenant_transaction(database.app, other.tenant_id) as conn:
        set_mailbox(
            conn,
            "sales@other.example",
            host="127.0.0.1",
            port=imap_server.port,
            security="none",
            username=SENDER,
            password_env="PENGUIN_SMTP_OTHER__IMAP",
        )
    a = "acme0@example.com"
    imap_server.deliver(SENDER, "imap-secret", samples.reply(SENDER, a, ids[a]))
    mine = samples.reply("sales@other.example", "someone@else.example", None, subject="Hi")
    imap_server.deliver(SENDER, "imap-secret", mine)
    report = poll_imap(database.app, env={**ENV, "PENGUIN_SMTP_OTHER__IMAP": "imap-secret"})
    assert (report.read, report.inbound, report.errors) == (4, 2, [])
    assert _events(database, acme) == [("reply", a)]
    with tenant_transaction(database.app, other.tenant_id) as conn:
        read = conn.execute(sa.text("select from_address from app.inbound_messages")).all()
    assert read == [("someone@else.example",)]


def test_an_authentication_results_naming_the_imap_host_is_the_senders_unless_configured(
    database, smtp_server, now, tmp_path, imap_server
):
    """A server that stamps no `Authentication-Results` (the many that check no DKIM) leaves
    the sender's own on top: one naming the account's IMAP host, an easy guess, made a forged
    reply without references end its whole company's sequences."""
    tenant, _ = _sent(database, smtp_server, now, tmp_path, imap_server)
    forged = "Authentication-Results: 127.0.0.1; dmarc=pass header.from=example.com\n"
    reply = samples.reply(SENDER, "acme0@example.com", None, subject="Hi", stamped=forged)
    imap_server.deliver(SENDER, "imap-secret", reply)
    poll_imap(database.app, env=ENV)
    with tenant_transaction(database.app, tenant.tenant_id) as conn:
        vouched = conn.execute(
            sa.text("select payload ->> 'authenticated' from app.email_events")
        ).scalar_one()
    assert vouched == "false"
