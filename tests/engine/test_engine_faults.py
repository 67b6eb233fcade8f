"""Full engine passes over simulated hours against a real SMTP server that misbehaves on demand
(tests/smtp_faults.py): every answer a server can give settles as the engine's rules say, each
pass's report tells exactly what the database shows, an outage costs no attempts and a tarpit
costs one timeout per pass.

The Courier alone (tests/engine/test_messenger.py) and single cases of one pass
(tests/engine/test_sending.py) are tested elsewhere; here one campaign meets every fault at once
and the fake clock walks it pass by pass (every five minutes, as the sensor would start them).
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta

import sqlalchemy as sa

from engine.campaigns import Step
from engine.db import Database, tenant_transaction
from engine.senders import SmtpServer
from engine.sending.messenger import CourierConfig
from engine.sending.scheduler import Config, SendReport, send_due
from engine.sequence import rules
from tests.factories import SeededTenant, seed_tenant

TICK = timedelta(minutes=5)

_PASS_MESSAGES = sa.text(
    """
    select
        count(*) filter (where sent_at = :at) as sent,
        count(*) filter (where status = 'bounced' and updated_at = :at) as bounced,
        count(*) filter (where status = 'failed' and updated_at = :at) as failed,
        count(*) filter (where status = 'unknown' and updated_at = :at) as unknown
    from app.sent_emails
    """
)
_PASS_WAITS = sa.text(
    """
    select wait_reason, count(*) from app.campaign_contacts
    where updated_at = :at and wait_reason is not null and status in ('enrolled', 'active')
    group by wait_reason
    """
)
_PASS_EXITS = sa.text(
    "select exit_reason, count(*) from app.campaign_contacts where exited_at = :at "
    "group by exit_reason"
)
_MESSAGES = sa.text(
    """
    select m.recipient_email, m.subject, m.status, m.attempts, m.last_error, m.message_id,
           cc.status as enrollment, cc.exit_reason, cc.wait_reason, cc.next_run_at,
           ct.status as contact
    from app.sent_emails m
    join app.campaign_contacts cc on cc.id = m.campaign_contact_id
    join app.contacts ct on ct.id = m.contact_id
    order by m.recipient_email, m.queued_at
    """
)
_SUPPRESSED = sa.text("select lower(email), reason from app.suppressions order by 1")
_CAMPAIGN_STATUS = sa.text("select status from app.campaigns where id = :id")


def _rows(local_parts: list[str]) -> list[list[str]]:
    return [[f"{local}@example.com", local, "Lee", "Acme", "pro"] for local in local_parts]


def _messages(
    database: Database, tenant: SeededTenant, subject: str | None = None
) -> dict[str, sa.Row]:
    """The tenant's messages (of the step with `subject`) by recipient local part."""
    with tenant_transaction(database.app, tenant.tenant_id) as conn:
        rows = conn.execute(_MESSAGES).all()
    by_local: dict[str, sa.Row] = {}
    for row in rows:
        if subject is not None and row.subject != subject:
            continue
        local = row.recipient_email.split("@")[0]
        assert local not in by_local, f"two messages to {row.recipient_email}"
        by_local[local] = row
    return by_local


def _assert_report_is_the_database(
    database: Database, tenants: list[SeededTenant], report: SendReport, at: datetime
) -> None:
    """Every count of the pass's report is what the pass wrote (its times are `at`)."""
    sent = bounced = failed = unknown = 0
    waits: Counter[str] = Counter()
    exits: Counter[str] = Counter()
    for tenant in tenants:
        with tenant_transaction(database.app, tenant.tenant_id) as conn:
            row = conn.execute(_PASS_MESSAGES, {"at": at}).one()
            waits.update(dict(conn.execute(_PASS_WAITS, {"at": at}).tuples().all()))
            exits.update(dict(conn.execute(_PASS_EXITS, {"at": at}).tuples().all()))
        sent, bounced = sent + row.sent, bounced + row.bounced
        failed, unknown = failed + row.failed, unknown + row.unknown
    counts = (report.sent, report.bounced, report.failed, report.unknown)
    assert counts == (sent, bounced, failed, unknown), at
    # A message that spent an attempt waits with reason `retry`; everything else that waits
    # was deferred (by reason), without an attempt.
    assert report.retrying == waits.pop(rules.RETRY, 0), at
    assert +report.deferred == waits, at
    assert +report.exited == exits, at


def _walk(
    database: Database,
    tenants: list[SeededTenant],
    sink: SmtpServer,
    start: datetime,
    end: datetime,
    config: Config | None = None,
) -> list[tuple[datetime, SendReport]]:
    """Passes every five minutes from `start` up to `end` (excluded), each checked against
    the database; the reports."""
    reports = []
    at = start
    while at < end:
        report = send_due(database.app, sink, at, config=config or Config())
        # Only messages that failed are listed as errors (nothing went wrong in recording).
        assert len(report.errors) == report.failed, report.errors
        _assert_report_is_the_database(database, tenants, report, at)
        reports.append((at, report))
        at += TICK
    return reports


def _total(reports: list[tuple[datetime, SendReport]]) -> SendReport:
    total = SendReport()
    for _, report in reports:
        for name in ("sent", "retrying", "bounced", "failed", "unknown", "claimed"):
            setattr(total, name, getattr(total, name) + getattr(report, name))
        total.deferred.update(report.deferred)
        total.exited.update(report.exited)
    return total


FAULTS = ["r421-busy", "r451-grey", "r550-gone", "d554-spam", "drop-after-data-cut"]
GOOD = ["ann", "bob", "cy"]


def test_every_answer_of_a_real_server_settles_by_the_rules_over_hours_of_passes(
    database, smtp_faults, now, tmp_path
):
    server = smtp_faults.start()
    tenant = seed_tenant(database, "acme", now, tmp_path, rows=_rows(FAULTS + GOOD))

    # The first pass: one batch meets every answer; the good recipients all go.
    [(_, first)] = _walk(database, [tenant], server.smtp, now, now + TICK)
    # ann, bob and cy sent; the one dropped after DATA is `unknown`, not sent.
    assert (first.sent, first.retrying, first.bounced, first.failed, first.unknown) == (
        3,
        2,
        1,
        1,
        1,
    )
    assert first.exited == Counter({"bounced": 1, "message rejected": 1})
    messages = _messages(database, tenant)
    assert {local: messages[local].status for local in GOOD} == dict.fromkeys(GOOD, "sent")

    # 550 on RCPT: a hard bounce; the address is suppressed and the enrollment exits.
    gone = messages["r550-gone"]
    assert (gone.status, gone.enrollment, gone.exit_reason, gone.contact) == (
        "bounced",
        "exited",
        "bounced",
        "bounced",
    )
    assert "550" in gone.last_error
    # 554 on DATA: the message was refused, not the address (README, issue 9 item 7: only a
    # 5xx on RCPT is a hard bounce). It fails and ends its enrollment; nothing is suppressed.
    spam = messages["d554-spam"]
    assert (spam.status, spam.enrollment, spam.exit_reason, spam.contact) == (
        "failed",
        "exited",
        "message rejected",
        "active",
    )
    assert "554" in spam.last_error
    # Dropped after DATA: it did arrive, the engine cannot know; `unknown`, and the sequence
    # moves on (here: completes) so it is never sent again.
    cut = messages["drop-after-data-cut"]
    assert (cut.status, cut.attempts, cut.enrollment) == ("unknown", 1, "completed")
    # 421 and 451 on RCPT: nothing was handed over; retried after the first backoff.
    for local in ("r421-busy", "r451-grey"):
        row = messages[local]
        assert (row.status, row.attempts, row.wait_reason) == ("queued", 1, rules.RETRY)
        assert row.next_run_at == now + rules.backoff(1, row.message_id)

    # Passes every five minutes for four more hours: each retry goes at the first pass after
    # its backoff (5, 10, 20, 40, 80 minutes, each plus up to a quarter), the sixth attempt
    # fails for good.
    attempts_at: dict[str, list[datetime]] = {"r421-busy": [now], "r451-grey": [now]}
    seen = {local: 1 for local in attempts_at}
    reports = [(now, first)]
    at = now + TICK
    while at < now + timedelta(hours=4):
        reports += _walk(database, [tenant], server.smtp, at, at + TICK)
        messages = _messages(database, tenant)
        for local, times in attempts_at.items():
            row = messages[local]
            if row.attempts > seen[local]:
                assert row.attempts == seen[local] + 1  # one attempt per pass at most
                previous = times[-1]
                wait = rules.backoff(len(times), row.message_id)
                # Not before its backoff, and at the first pass after it.
                assert previous + wait <= at < previous + wait + TICK, (local, len(times))
                times.append(at)
                seen[local] = row.attempts
        at += TICK

    messages = _messages(database, tenant)
    for local, times in attempts_at.items():
        row = messages[local]
        assert len(times) == row.attempts == Config().max_attempts
        # Waits of 5, 10, 20, 40, 80 minutes with up to a quarter of jitter (and at most one
        # tick of lateness): the attempts span hours, not minutes.
        for n, (before, after) in enumerate(zip(times, times[1:], strict=False), start=1):
            base = timedelta(minutes=5 * 2 ** (n - 1))
            assert base <= after - before < base * 1.25 + TICK, (local, n)
        assert times[-1] - times[0] >= timedelta(minutes=155)
        # Given up: failed and exited, the address never suppressed, the contact still active.
        assert (row.status, row.enrollment, row.exit_reason, row.contact) == (
            "failed",
            "exited",
            "send failed",
            "active",
        )
        assert row.last_error.startswith(f"gave up after {Config().max_attempts} attempts: 4")

    with tenant_transaction(database.app, tenant.tenant_id) as conn:
        assert conn.execute(_SUPPRESSED).all() == [("r550-gone@example.com", "bounce")]
        assert conn.execute(_CAMPAIGN_STATUS, {"id": tenant.campaign_id}).scalar_one() == (
            "completed"
        )
    # Each message reached the server at most once, over every pass: the good ones and the
    # one whose connection dropped after DATA (it did arrive; never sent again).
    assert server.recipients() == sorted(
        [f"{local}@example.com" for local in GOOD] + ["drop-after-data-cut@example.com"]
    )
    # The reports of all passes count each message's end once and each retry once: 10 retries
    # (5 each), 3 failures (the 554 and the two that gave up), nothing deferred.
    total = _total(reports)
    assert (total.sent, total.retrying, total.bounced, total.failed, total.unknown) == (
        3,
        10,
        1,
        3,
        1,
    )
    assert total.exited == Counter({"bounced": 1, "message rejected": 1, "send failed": 2})
    assert +total.deferred == Counter()
    # One batch of 8, then each retry claimed alone: only due work is claimed.
    assert total.claimed == 8 + 2 * (Config().max_attempts - 1)


def test_a_fifteen_minute_outage_defers_without_spending_attempts_and_all_goes_after(
    database, smtp_faults, now, tmp_path
):
    server = smtp_faults.start()
    steps = [
        Step("email", subject="One", body_text="1"),
        Step("wait", wait=timedelta(minutes=10)),
        Step("email", subject="Two", body_text="2"),
    ]
    rows = _rows(["r451-grey", *GOOD])
    tenant = seed_tenant(database, "acme", now, tmp_path, rows=rows, steps=steps)
    down = smtp_faults.refused()

    # Up: the first emails go (the 451 one waits for its retry, due within 5-6.25 minutes).
    _walk(database, [tenant], server.smtp, now, now + TICK)
    # Down from +5 to +20 minutes: the retry due meanwhile, and the three second emails due at
    # +10, meet a refused connection: deferred 15 minutes, reason `server down`, no attempt.
    outage = _walk(database, [tenant], down, now + TICK, now + 4 * TICK)
    total = _total(outage)
    assert (total.sent, total.retrying, total.failed) == (0, 0, 0)
    assert total.deferred == Counter({rules.SERVER_DOWN: 4})
    assert _messages(database, tenant, "One")["r451-grey"].attempts == 1
    with tenant_transaction(database.app, tenant.tenant_id) as conn:
        waiting = conn.execute(
            sa.text(
                "select m.attempts, cc.wait_reason, cc.next_run_at - m.updated_at as delay "
                "from app.sent_emails m "
                "join app.campaign_contacts cc on cc.id = m.campaign_contact_id "
                "where m.status = 'queued'"
            )
        ).all()
    assert {(w.attempts, w.wait_reason, w.delay) for w in waiting} == {
        (0, rules.SERVER_DOWN, rules.SERVER_DOWN_DELAY),
        (1, rules.SERVER_DOWN, rules.SERVER_DOWN_DELAY),  # the 451 retry: still one attempt
    }

    # Back up at +20: every second email goes at the first pass after its deferral, with one
    # attempt; the retry goes with its second (and gets its 451 again).
    after = _walk(database, [tenant], server.smtp, now + 4 * TICK, now + 7 * TICK)
    assert _total(after).sent == 3 and _total(after).retrying == 1
    seconds = _messages(database, tenant, "Two")
    assert {local: (m.status, m.attempts) for local, m in seconds.items()} == dict.fromkeys(
        GOOD, ("sent", 1)
    )
    assert _messages(database, tenant, "One")["r451-grey"].attempts == 2
    assert sorted(Counter(server.recipients()).values()) == [2, 2, 2]  # One and Two, once each


def test_a_tarpit_costs_one_timeout_per_pass_and_its_other_messages_wait_untried(
    database, smtp_faults, now, tmp_path
):
    tarpit, healthy = smtp_faults.start(tarpit=True), smtp_faults.start()
    stuck = seed_tenant(database, "stuck", now, tmp_path, rows=_rows([f"t{i}" for i in range(6)]))
    fine = seed_tenant(database, "fine", now, tmp_path, rows=_rows(GOOD))
    with tenant_transaction(database.app, stuck.tenant_id) as conn:
        conn.execute(  # the stuck tenant's sender has its own server: the tarpit
            sa.text(
                "update app.sender_accounts set smtp_host = '127.0.0.1', smtp_port = :port, "
                "smtp_security = 'none'"
            ),
            {"port": tarpit.port},
        )
    config = Config(courier=CourierConfig(timeout=0.5))

    [(_, first)] = _walk(database, [stuck, fine], healthy.smtp, now, now + TICK, config)
    # One connection attempt to the tarpit (one timeout), none per message: all six wait 15
    # minutes untried; the other tenant's messages went meanwhile.
    assert tarpit.connections == 1
    assert (first.sent, first.retrying, first.failed) == (3, 0, 0)
    assert first.deferred == Counter({rules.SERVER_DOWN: 6})
    assert {(m.status, m.attempts) for m in _messages(database, stuck).values()} == {("queued", 0)}
    assert sorted(healthy.recipients()) == [f"{local}@example.com" for local in GOOD]

    # Every later pass with its messages due costs one more attempt to connect, never one per
    # message, and never spends an attempt of theirs.
    _walk(database, [stuck, fine], healthy.smtp, now + TICK, now + 7 * TICK, config)
    assert tarpit.connections == 3  # at +15 and +30 minutes: the passes they were due at
    assert {(m.status, m.attempts) for m in _messages(database, stuck).values()} == {("queued", 0)}
