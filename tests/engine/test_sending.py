"""The sending engine against a real SMTP server: claim → render → SMTP → record → advance."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from engine.campaigns import Step
from engine.db import tenant_transaction
from engine.sending import store
from engine.sending.scheduler import Config, send_due
from tests.factories import people, seed_tenant


def _messages(database, tenant):
    with tenant_transaction(database.app, tenant.tenant_id) as conn:
        return conn.execute(
            sa.text(
                "select recipient_email, status, attempts, last_error from app.sent_emails "
                "order by recipient_email"
            )
        ).all()


def _enrollments(database, tenant):
    with tenant_transaction(database.app, tenant.tenant_id) as conn:
        return conn.execute(
            sa.text(
                "select c.email, cc.status, cc.exit_reason, cc.next_run_at, cc.steps_completed "
                "from app.campaign_contacts cc join app.contacts c on c.id = cc.contact_id "
                "order by c.email"
            )
        ).all()


def test_due_enrollments_are_sent_personalized_and_recorded(database, smtp_server, now, tmp_path):
    tenant = seed_tenant(database, "acme", now, tmp_path)
    report = send_due(database.app, smtp_server.server(), now)
    assert (report.claimed, report.sent) == (3, 3)
    subjects = sorted(m["Subject"] for m in smtp_server.messages)
    assert subjects == ["Hi First0", "Hi First1", "Hi First2"]
    first = next(m for m in smtp_server.messages if m["To"] == "acme0@example.com")
    assert "Hello First0 at Acme Inc (pro)" in first.get_content()
    assert first["From"] == "Acme Sales <sales@acme.example>"
    assert first["List-Unsubscribe"]
    assert [(m.status, m.attempts) for m in _messages(database, tenant)] == [("sent", 1)] * 3
    assert {e.status for e in _enrollments(database, tenant)} == {"completed"}


def test_a_contact_without_a_first_name_is_greeted_by_the_templates_default(
    database, smtp_server, now, tmp_path
):
    rows = [["ann@example.com", "Ann", "", "", ""], ["nobody@example.com", "", "", "", ""]]
    step = Step(
        "email", subject="Quick question, {{ first_name | default('there') }}", body_text="Hi"
    )
    seed_tenant(database, "acme", now, tmp_path, rows=rows, steps=[step])
    assert send_due(database.app, smtp_server.server(), now).sent == 2
    subjects = {m["To"]: m["Subject"] for m in smtp_server.messages}
    assert subjects == {
        "ann@example.com": "Quick question, Ann",
        "nobody@example.com": "Quick question, there",
    }


def test_running_twice_sends_each_message_once(database, smtp_server, now, tmp_path):
    seed_tenant(database, "acme", now, tmp_path)
    send_due(database.app, smtp_server.server(), now)
    again = send_due(database.app, smtp_server.server(), now + timedelta(hours=1))
    assert again.claimed == 0
    assert len(smtp_server.messages) == 3


def test_nothing_is_sent_before_it_is_due(database, smtp_server, now, tmp_path):
    seed_tenant(database, "acme", now, tmp_path)
    report = send_due(database.app, smtp_server.server(), now - timedelta(minutes=1))
    assert report.claimed == 0 and smtp_server.messages == []


def test_wait_step_delays_the_next_email(database, smtp_server, now, tmp_path):
    steps = [
        Step("email", subject="One", body_text="1"),
        Step("wait", wait=timedelta(days=2)),
        Step("email", subject="Two", body_text="2"),
    ]
    seed_tenant(database, "acme", now, tmp_path, steps=steps)
    send_due(database.app, smtp_server.server(), now)
    assert sorted({m["Subject"] for m in smtp_server.messages}) == ["One"]
    send_due(database.app, smtp_server.server(), now + timedelta(days=1))
    assert len(smtp_server.messages) == 3
    send_due(database.app, smtp_server.server(), now + timedelta(days=2, minutes=1))
    assert [m["Subject"] for m in smtp_server.messages].count("Two") == 3


def test_suppressed_address_is_never_emailed(database, smtp_server, now, tmp_path):
    tenant = seed_tenant(database, "acme", now, tmp_path)
    with tenant_transaction(database.app, tenant.tenant_id) as conn:
        conn.execute(
            store.SUPPRESS,
            {"email": "ACME1@example.com", "reason": "unsubscribe", "detail": None, "now": now},
        )
    report = send_due(database.app, smtp_server.server(), now)
    assert report.exited["suppressed"] == 1
    assert sorted(m["To"] for m in smtp_server.messages) == [
        "acme0@example.com",
        "acme2@example.com",
    ]
    exited = [e for e in _enrollments(database, tenant) if e.status == "exited"]
    assert [(e.email, e.exit_reason) for e in exited] == [("acme1@example.com", "suppressed")]


def test_permanent_smtp_failure_bounces_suppresses_and_exits(database, smtp_server, now, tmp_path):
    tenant = seed_tenant(database, "acme", now, tmp_path)
    smtp_server.handler.refuse["acme1@example.com"] = "550 5.1.1 No such user"
    report = send_due(database.app, smtp_server.server(), now)
    assert (report.sent, report.bounced) == (2, 1)
    bounced = [m for m in _messages(database, tenant) if m.status == "bounced"]
    assert bounced[0].recipient_email == "acme1@example.com"
    assert "550" in bounced[0].last_error
    with tenant_transaction(database.app, tenant.tenant_id) as conn:
        suppressed = conn.execute(sa.text("select email, reason from app.suppressions")).all()
    assert suppressed == [("acme1@example.com", "bounce")]


def test_transient_failure_retries_with_backoff_then_gives_up(database, smtp_server, now, tmp_path):
    tenant = seed_tenant(database, "acme", now, tmp_path)
    smtp_server.handler.refuse["acme1@example.com"] = "451 4.3.0 Try again later"
    config = Config(max_attempts=2)
    first = send_due(database.app, smtp_server.server(), now, config=config)
    assert (first.sent, first.retrying) == (2, 1)
    waiting = [e for e in _enrollments(database, tenant) if e.email == "acme1@example.com"][0]
    # Five minutes, plus up to a quarter of it as jitter.
    assert timedelta(minutes=5) <= waiting.next_run_at - now < timedelta(minutes=6, seconds=15)
    assert (
        send_due(
            database.app, smtp_server.server(), now + timedelta(minutes=4), config=config
        ).claimed
        == 0
    )
    second = send_due(database.app, smtp_server.server(), waiting.next_run_at, config=config)
    assert second.failed == 1
    failed = [m for m in _messages(database, tenant) if m.recipient_email == "acme1@example.com"]
    assert [(m.status, m.attempts) for m in failed] == [("failed", 2)]


def test_transient_failure_then_success_sends_the_same_message(
    database, smtp_server, now, tmp_path
):
    tenant = seed_tenant(database, "acme", now, tmp_path)
    smtp_server.handler.refuse["acme1@example.com"] = "421 4.7.0 Slow down"
    send_due(database.app, smtp_server.server(), now)
    del smtp_server.handler.refuse["acme1@example.com"]
    assert send_due(database.app, smtp_server.server(), now + timedelta(minutes=1)).sent == 0
    report = send_due(database.app, smtp_server.server(), now + timedelta(minutes=7))
    assert report.sent == 1
    rows = [m for m in _messages(database, tenant) if m.recipient_email == "acme1@example.com"]
    assert [(m.status, m.attempts) for m in rows] == [("sent", 2)]


_LEASE_ALL = sa.text(
    """
    update app.campaign_contacts
    set lease_owner = :worker, lease_expires_at = :until, status = 'active'
    where status in ('enrolled', 'active')
    returning id, current_step_id
    """
)
_SENDING = sa.text(
    """
    insert into app.sent_emails
        (tenant_id, campaign_contact_id, campaign_id, step_id, contact_id, sender_account_id,
         recipient_email, subject, message_id, status, attempts, queued_at)
    select cc.tenant_id, cc.id, cc.campaign_id, cc.current_step_id, cc.contact_id,
           cs.sender_account_id, ct.email, 'x', cc.id::text || '@t', 'sending', 1, :now
    from app.campaign_contacts cc
    join app.contacts ct on ct.id = cc.contact_id
    join app.campaign_senders cs on cs.campaign_id = cc.campaign_id
    where cc.lease_owner = :worker
    """
)


def _lease_all(database, tenant, worker, now, *, sending=False):
    """What a worker that claimed every due enrollment leaves when it stops: leases for five
    minutes, and with `sending` its messages mid-conversation."""
    with tenant_transaction(database.app, tenant.tenant_id) as conn:
        rows = conn.execute(
            _LEASE_ALL, {"worker": worker, "until": now + timedelta(minutes=5)}
        ).all()
        if sending:
            conn.execute(_SENDING, {"worker": worker, "now": now})
    return rows


def test_message_in_doubt_after_a_crash_is_not_resent(database, smtp_server, now, tmp_path):
    tenant = seed_tenant(database, "acme", now, tmp_path)
    _lease_all(database, tenant, "dead-worker", now, sending=True)
    assert send_due(database.app, smtp_server.server(), now + timedelta(minutes=1)).claimed == 0
    report = send_due(database.app, smtp_server.server(), now + timedelta(minutes=6))
    assert (report.claimed, report.unknown, report.sent) == (3, 3, 0)
    assert smtp_server.messages == []
    assert {m.status for m in _messages(database, tenant)} == {"unknown"}


def test_two_workers_never_claim_the_same_enrollment(database, now, tmp_path):
    tenant = seed_tenant(database, "acme", now, tmp_path)
    with tenant_transaction(database.app, tenant.tenant_id) as first:
        mine = first.execute(store.CLAIM, {"now": now, "limit": 2}).all()
        with tenant_transaction(database.app, tenant.tenant_id) as second:
            theirs = second.execute(store.CLAIM, {"now": now, "limit": 10}).all()
    assert len(mine) == 2 and len(theirs) == 1
    assert not {r.enrollment_id for r in mine} & {r.enrollment_id for r in theirs}


def test_a_server_that_is_down_defers_its_messages_without_spending_attempts(
    database, smtp_server, now, tmp_path
):
    from engine.senders import SmtpServer
    from tests.conftest import free_port

    tenant = seed_tenant(database, "acme", now, tmp_path)
    report = send_due(database.app, SmtpServer("127.0.0.1", free_port()), now)
    assert (report.retrying, report.deferred["server down"]) == (0, 3)
    assert {(m.status, m.attempts) for m in _messages(database, tenant)} == {("queued", 0)}
    assert all(
        "Connect" in m.last_error or "connect" in m.last_error for m in _messages(database, tenant)
    )
    waiting = _enrollments(database, tenant)
    assert {e.next_run_at for e in waiting} == {now + timedelta(minutes=15)}
    # An outage of any length fails nothing: once the server is back, every message goes.
    for hours in range(1, 6):
        send_due(database.app, SmtpServer("127.0.0.1", free_port()), now + timedelta(hours=hours))
    report = send_due(database.app, smtp_server.server(), now + timedelta(hours=6))
    assert report.sent == 3
    assert {(m.status, m.attempts) for m in _messages(database, tenant)} == {("sent", 1)}


def _use_own_smtp_server(database, tenant, smtp_server, password_env=None):
    with tenant_transaction(database.app, tenant.tenant_id) as conn:
        conn.execute(
            sa.text(
                "update app.sender_accounts set smtp_host = :host, smtp_port = :port, "
                "smtp_security = 'none', smtp_username = :user, smtp_password_env = :env"
            ),
            {
                "host": smtp_server.host,
                "port": smtp_server.port,
                "user": "sales" if password_env else None,
                "env": password_env,
            },
        )


def test_messages_stamped_on_a_later_day_do_not_count_against_todays_campaign_limit(
    database, smtp_server, now, tmp_path
):
    from engine.senders import create_sender

    tenant = seed_tenant(database, "acme", now, tmp_path, rows=people("acme", 5))
    with tenant_transaction(database.app, tenant.tenant_id) as conn:
        conn.execute(sa.text("update app.campaign_settings set daily_limit = 3"))
    # A pass run as if it were tomorrow (`penguin send --now`, a clock ahead) uses that day's
    # limit; the two it could not send wait for the day after.
    assert send_due(database.app, smtp_server.server(), now + timedelta(days=1)).sent == 3
    # Due today after all (a worker whose clock is right), from a sender of its own (the first
    # one's last message is tomorrow's): today's campaign limit is untouched.
    with tenant_transaction(database.app, tenant.tenant_id) as conn:
        other = create_sender(conn, "other@acme.example", "Other", min_gap_seconds=0, now=now)
        conn.execute(
            sa.text("update app.campaign_senders set sender_account_id = :id"), {"id": other}
        )
        conn.execute(
            sa.text(
                "update app.campaign_contacts set next_run_at = :now, wait_reason = null "
                "where status in ('enrolled', 'active')"
            ),
            {"now": now},
        )
    report = send_due(database.app, smtp_server.server(), now)
    assert (report.sent, report.deferred["campaign limit"]) == (2, 0), report


def test_a_senders_own_server_that_is_down_is_named_with_what_to_check(
    database, smtp_server, now, tmp_path
):
    from engine.senders import SmtpServer
    from tests.conftest import free_port

    tenant = seed_tenant(database, "acme", now, tmp_path)
    down = SmtpServer("127.0.0.1", free_port())
    _use_own_smtp_server(database, tenant, down)
    report = send_due(database.app, smtp_server.server(), now)
    [(reason, count)] = report.servers_down.items()
    assert count == 3 and reason.startswith(f"127.0.0.1:{down.port} is down: ")
    assert reason.endswith(
        "check sender sales@acme.example's SMTP host and port "
        "(`penguin sender list --tenant acme`) and that the server accepts connections"
    )
    assert {m.last_error for m in _messages(database, tenant)} == {reason}
    assert report.as_dict()["servers_down"] == {reason: 3}


def test_sender_with_its_own_smtp_server_does_not_use_the_sink(
    database, smtp_server, now, tmp_path
):
    from engine.senders import SmtpServer
    from tests.conftest import free_port

    tenant = seed_tenant(database, "acme", now, tmp_path)
    _use_own_smtp_server(database, tenant, smtp_server)
    unreachable_sink = SmtpServer("127.0.0.1", free_port())
    report = send_due(database.app, unreachable_sink, now)
    assert report.sent == 3 and len(smtp_server.messages) == 3


def test_missing_smtp_password_variable_is_named_and_nothing_is_lost(
    database, smtp_server, now, tmp_path
):
    tenant = seed_tenant(database, "acme", now, tmp_path)
    _use_own_smtp_server(database, tenant, smtp_server, password_env="PENGUIN_SMTP_ACME__MAIN")
    report = send_due(database.app, smtp_server.server(), now, env={})
    assert report.retrying == 3 and smtp_server.messages == []
    errors = {m.last_error for m in _messages(database, tenant)}
    assert errors == {
        "sender sales@acme.example: environment variable PENGUIN_SMTP_ACME__MAIN "
        "(its SMTP password) is not set"
    }
    assert {m.status for m in _messages(database, tenant)} == {"queued"}


def test_refused_sender_is_retried_never_a_bounce(database, smtp_server, now, tmp_path):
    tenant = seed_tenant(database, "acme", now, tmp_path)
    smtp_server.handler.refuse_sender = "553 5.7.1 Sender address not allowed"
    report = send_due(database.app, smtp_server.server(), now)
    assert (report.bounced, report.retrying) == (0, 3)
    with tenant_transaction(database.app, tenant.tenant_id) as conn:
        assert conn.execute(sa.text("select count(*) from app.suppressions")).scalar() == 0
    assert {m.status for m in _messages(database, tenant)} == {"queued"}
    assert all("553" in m.last_error for m in _messages(database, tenant))


def test_refused_message_fails_without_suppressing_the_address(
    database, smtp_server, now, tmp_path
):
    tenant = seed_tenant(database, "acme", now, tmp_path)
    smtp_server.handler.refuse_data = "554 5.7.1 Message looks like spam"
    report = send_due(database.app, smtp_server.server(), now)
    assert (report.failed, report.bounced) == (3, 0)
    assert {m.status for m in _messages(database, tenant)} == {"failed"}
    assert {e.exit_reason for e in _enrollments(database, tenant)} == {"message rejected"}
    with tenant_transaction(database.app, tenant.tenant_id) as conn:
        assert conn.execute(sa.text("select count(*) from app.suppressions")).scalar() == 0


def test_a_worker_whose_lease_was_taken_over_changes_nothing(database, smtp_server, now, tmp_path):
    tenant = seed_tenant(database, "acme", now, tmp_path)
    [row, *_] = _lease_all(database, tenant, "slow-worker", now)
    # Ten minutes later the lease has run out; another worker takes the enrollments over.
    later = now + timedelta(minutes=10)
    assert send_due(database.app, smtp_server.server(), later).sent == 3
    with tenant_transaction(database.app, tenant.tenant_id) as conn:
        assert not store.advance(conn, row.id, row.current_step_id, later, "slow-worker")
        assert not store.exit_enrollment(conn, row.id, "late", later, "slow-worker")
    assert {(e.status, e.steps_completed) for e in _enrollments(database, tenant)} == {
        ("completed", 1)
    }


def test_a_lease_runs_out_at_its_expiry_time_for_the_sender_as_for_the_step_pass(
    database, smtp_server, now, tmp_path
):
    """One rule for every statement: a lease holds until `lease_expires_at`, not at it. A
    second earlier nobody may take the enrollments; at the very moment, the next pass sends."""
    tenant = seed_tenant(database, "acme", now, tmp_path)
    _lease_all(database, tenant, "stopped-worker", now)
    expiry = now + timedelta(minutes=5)
    with tenant_transaction(database.app, tenant.tenant_id) as conn:
        assert store.due_summary(conn, expiry - timedelta(seconds=1))[0] == 0
        assert store.due_summary(conn, expiry)[0] == 3
    assert send_due(database.app, smtp_server.server(), expiry - timedelta(seconds=1)).claimed == 0
    assert send_due(database.app, smtp_server.server(), expiry).sent == 3


def test_a_sender_a_campaign_rotates_over_cannot_be_deleted(database, now, tmp_path):
    tenant = seed_tenant(database, "acme", now, tmp_path)
    with pytest.raises(sa.exc.IntegrityError, match="campaign_senders"):
        with tenant_transaction(database.app, tenant.tenant_id) as conn:
            conn.execute(sa.text("delete from app.sender_accounts"))


def test_campaign_without_a_usable_sender_exits_and_other_tenants_still_send(
    database, smtp_server, now, tmp_path
):
    broken = seed_tenant(database, "broken", now, tmp_path)
    healthy = seed_tenant(database, "healthy", now, tmp_path)
    with tenant_transaction(database.app, broken.tenant_id) as conn:
        conn.execute(sa.text("delete from app.campaign_senders"))
    report = send_due(database.app, smtp_server.server(), now)
    assert report.sent == 3
    assert {m["To"].split("@")[0][:-1] for m in smtp_server.messages} == {"healthy"}
    assert {e.exit_reason for e in _enrollments(database, broken)} == {
        "the campaign has no sender account"
    }
    assert {e.status for e in _enrollments(database, healthy)} == {"completed"}


def test_line_breaks_in_data_never_reach_a_header(database, smtp_server, now, tmp_path):
    rows = [["multi@example.com", "Ann", "Lee", "Acme\nInternational", "pro"]]
    steps = [Step("email", subject="For {{ company }}\n", body_text="Hello {{ company }}")]
    seed_tenant(database, "acme", now, tmp_path, rows=rows, steps=steps)
    report = send_due(database.app, smtp_server.server(), now)
    assert report.sent == 1
    assert smtp_server.messages[0]["Subject"] == "For Acme International"
    assert "Acme\r\nInternational" in smtp_server.messages[0].get_content()  # body keeps it


def test_a_sender_cannot_read_other_secrets_as_its_password(database, now, tmp_path):
    from engine.senders import SenderConfigError, create_sender

    tenant = seed_tenant(database, "acme", now, tmp_path)
    with (
        pytest.raises(
            SenderConfigError,
            match="'DATABASE_URL' must be named PENGUIN_SMTP_ACME__<NAME> for tenant acme",
        ),
        tenant_transaction(database.app, tenant.tenant_id) as conn,
    ):
        create_sender(
            conn, "x@acme.example", smtp_host="evil.example", smtp_password_env="DATABASE_URL"
        )
    with pytest.raises(sa.exc.IntegrityError, match="smtp_password_env"):
        with tenant_transaction(database.app, tenant.tenant_id) as conn:
            conn.execute(
                sa.text("update app.sender_accounts set smtp_password_env = 'DATABASE_URL'")
            )


def test_campaign_with_another_tenants_sender_is_refused(database, now, tmp_path):
    from engine.campaigns import CampaignError, create_campaign, launch_campaign

    other = seed_tenant(database, "other", now, tmp_path)
    mine = seed_tenant(database, "mine", now, tmp_path)
    with pytest.raises(
        CampaignError, match=f"sender account {other.sender_id} does not exist in this tenant"
    ):
        with tenant_transaction(database.app, mine.tenant_id) as conn:
            campaign = create_campaign(
                conn,
                "sneaky",
                now,
                list_name="leads",
                sender_id=other.sender_id,
                steps=[Step("email", subject="s", body_text="b")],
            )
            launch_campaign(conn, campaign, now)


def test_an_item_the_database_refuses_ends_alone_and_the_batch_is_sent(
    database, smtp_server, now, tmp_path
):
    # A Jinja string literal may hold "\x00"; PostgreSQL text cannot, so writing this one
    # message row fails. Only its enrollment ends; the batch's transaction goes on.
    subject = "Hi{% if email == 'acme1@example.com' %}{{ '\\x00' }}{% endif %}"
    tenant = seed_tenant(
        database, "acme", now, tmp_path, steps=[Step("email", subject=subject, body_text="b")]
    )
    report = send_due(database.app, smtp_server.server(), now)
    assert (report.sent, report.failed) == (2, 1)
    assert sorted(m["To"] for m in smtp_server.messages) == [
        "acme0@example.com",
        "acme2@example.com",
    ]
    exited = {
        e.email: e.exit_reason for e in _enrollments(database, tenant) if e.status == "exited"
    }
    assert list(exited) == ["acme1@example.com"]
    assert exited["acme1@example.com"].startswith("could not prepare the message: DataError: ")
    assert "NUL" in exited["acme1@example.com"]
    assert [(m.recipient_email, m.status, m.attempts) for m in _messages(database, tenant)] == [
        ("acme0@example.com", "sent", 1),
        ("acme1@example.com", "failed", 0),
        ("acme2@example.com", "sent", 1),
    ]


def test_contact_data_a_template_cannot_take_ends_only_that_enrollment(
    database, smtp_server, now, tmp_path
):
    tenant = seed_tenant(database, "acme", now, tmp_path)
    with tenant_transaction(database.app, tenant.tenant_id) as conn:
        conn.execute(  # written around the ingest, which keeps attributes an object
            sa.text("update app.contacts set attributes = '[1, 2]' where email = :email"),
            {"email": "acme1@example.com"},
        )
    report = send_due(database.app, smtp_server.server(), now)
    assert report.sent == 2
    exited = {
        e.email: e.exit_reason for e in _enrollments(database, tenant) if e.status == "exited"
    }
    assert list(exited) == ["acme1@example.com"]
    assert exited["acme1@example.com"].startswith("template error: step 1: TypeError: ")


def test_variants_the_engine_cannot_read_end_only_their_enrollments(
    database, smtp_server, now, tmp_path
):
    broken = seed_tenant(database, "broken", now, tmp_path)
    seed_tenant(database, "healthy", now, tmp_path)
    with tenant_transaction(database.app, broken.tenant_id) as conn:
        conn.execute(  # written around the campaign files, which refuse such a weight
            sa.text(
                "update app.campaign_steps set subject = null, body_text = null, "
                """variants = '[{"subject": "a", "text": "b", "weight": "heavy"}]'"""
            )
        )
    report = send_due(database.app, smtp_server.server(), now)
    assert report.sent == 3
    assert {m["To"].split("@")[0][:-1] for m in smtp_server.messages} == {"healthy"}
    assert {(e.status, e.exit_reason) for e in _enrollments(database, broken)} == {
        ("exited", "invalid step")
    }
    assert report.exited["invalid step"] == 3
    assert any("variants: ValueError" in e for e in report.errors)


@pytest.mark.parametrize(
    ("table", "change"),
    [
        ("campaign_settings", "send_window_start = '22:00', send_window_end = '06:00'"),
        ("campaign_settings", "send_days = '{}'"),
        ("campaign_settings", "send_days = '{1,8}'"),
        ("campaigns", "start_at = '2026-12-02', end_at = '2026-12-01'"),
    ],
)
def test_settings_the_scheduling_rules_cannot_use_are_refused_by_the_database(
    database, now, tmp_path, table, change
):
    """Else one campaign's settings would stop every send of its tenant's batch."""
    tenant = seed_tenant(database, "acme", now, tmp_path)
    with pytest.raises(sa.exc.IntegrityError, match="check"):
        with tenant_transaction(database.app, tenant.tenant_id) as conn:
            conn.execute(sa.text(f"update app.{table} set {change}"))


def test_a_commit_that_fails_while_marking_leaves_no_transaction_holding_the_rows(
    database, smtp_server, now, tmp_path
):
    """The ledger keeps one connection for a batch. A commit that fails (the server's answer
    lost) leaves the server's transaction open with the rows it marked: the connection must be
    given up, not kept for the next group, or every later pass waits on those rows for ever."""
    tenant = seed_tenant(database, "acme", now, tmp_path)
    marking = []

    def note_marks(conn, cursor, statement, *args) -> None:
        if " ".join(statement.split()).startswith("with marked as"):
            marking.append(True)

    def fail_once_after_a_mark(*args) -> None:
        if marking and len(marking) < 2:
            marking.append(True)
            raise ConnectionError("the commit's answer was lost")

    sa.event.listen(database.app, "before_cursor_execute", note_marks)
    sa.event.listen(database.app, "commit", fail_once_after_a_mark)
    try:
        report = send_due(database.app, smtp_server.server(), now)
    finally:
        sa.event.remove(database.app, "before_cursor_execute", note_marks)
        sa.event.remove(database.app, "commit", fail_once_after_a_mark)
    assert any("could not record a message" in e for e in report.errors), report.errors
    with database.owner.connect() as conn:
        open_transactions = conn.execute(
            sa.text(
                "select count(*) from pg_stat_activity where datname = current_database() "
                "and usename = 'penguin_app' and state like 'idle in transaction%'"
            )
        ).scalar()
    assert open_transactions == 0
    # The message whose mark was lost was never sent; once its lease runs out it goes.
    later = send_due(database.app, smtp_server.server(), now + timedelta(minutes=6))
    assert report.sent + later.sent == 3
    assert len(smtp_server.messages) == 3
    assert {m.status for m in _messages(database, tenant)} == {"sent"}
