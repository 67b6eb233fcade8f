"""Crashes in the middle of a pass, found by the engine's state machine, each reduced to one
deterministic case: what a stopped worker leaves in doubt, and what the next pass does with it.
"""

from __future__ import annotations

import contextlib
import threading
import time as stopwatch
from collections import Counter
from datetime import timedelta

import sqlalchemy as sa

from engine.db import tenant_transaction
from engine.sending import store
from engine.sending.messenger import CourierConfig
from engine.sending.scheduler import Config, send_due

LEASE = Config().lease


_UNSUBSCRIBE = sa.text(
    "update app.contacts set status = 'unsubscribed', updated_at = :now where lower(email) = :email"
)


class Crash(Exception):
    """The process died here: this statement and every later one never ran."""


def _is_settling(statement: str) -> bool:
    """The first statement of every transaction that records an outcome: it locks the
    enrollment row(s) (store.LOCK_ENROLLMENT / LOCK_ENROLLMENTS)."""
    return statement.lstrip().startswith("select id from app.campaign_contacts where id")


_FIRST_IN_LINE = sa.text(
    """
    update app.campaign_contacts cc set next_run_at = next_run_at - interval '1 minute'
    from app.contacts ct where ct.id = cc.contact_id and ct.email = :email
    """
)


def test_a_crash_while_an_outcome_is_being_recorded_leaves_at_most_the_concurrency_in_doubt(
    database, smtp_faults, now, tmp_path
):
    """Found by the state machine. Two conversations at a time: one server never answers the
    first message's RCPT; the second message is delivered, and while its outcome is being
    recorded (the database is slow) the worker dies. Two messages may be in doubt, those two
    conversations; a third must not have been marked and sent meanwhile."""
    from tests.factories import people, seed_tenant

    server = smtp_faults.start()
    rows = [["hang-first@example.com", "H", "L", "Acme", "pro"], *people("acme", 3)]
    tenant = seed_tenant(database, "acme", now, tmp_path, rows=rows)
    with tenant_transaction(database.app, tenant.tenant_id) as conn:
        conn.execute(_FIRST_IN_LINE, {"email": "hang-first@example.com"})
    config = Config(courier=CourierConfig(concurrency=2, timeout=3))
    dead = threading.Event()

    def slow_then_dead(conn, cursor, statement, *args) -> None:
        if dead.is_set():
            raise Crash("dead")
        if _is_settling(statement):
            stopwatch.sleep(1)  # the database is slow; the worker dies meanwhile
            dead.set()
            raise Crash("dead")

    sa.event.listen(database.app, "before_cursor_execute", slow_then_dead)
    try:
        try:
            send_due(database.app, server.smtp, now, config=config)
        except Exception:
            assert dead.is_set()
    finally:
        sa.event.remove(database.app, "before_cursor_execute", slow_then_dead)

    with tenant_transaction(database.app, tenant.tenant_id) as conn:
        statuses = Counter(conn.execute(sa.text("select status from app.sent_emails")).scalars())
    assert statuses == {"sending": 2, "queued": 2}
    assert len(server.arrivals) == 1


def test_a_message_left_sending_is_in_doubt_even_when_its_contact_stops_before_the_next_pass(
    database, smtp_faults, now, tmp_path
):
    """Found by the state machine: a worker dies while recording a delivered message; before
    the next pass the contact unsubscribes. The next pass ends the enrollment and must still
    mark the message `unknown` (never resent), not leave it `sending` for ever."""
    from tests.factories import seed_tenant

    server = smtp_faults.start()
    rows = [["ann@example.com", "Ann", "Lee", "Acme", "pro"]]
    tenant = seed_tenant(database, "acme", now, tmp_path, rows=rows)

    def dead_when_recording(conn, cursor, statement, *args) -> None:
        if _is_settling(statement):
            raise Crash("dead")

    sa.event.listen(database.app, "before_cursor_execute", dead_when_recording)
    try:
        with contextlib.suppress(Exception):
            send_due(database.app, server.smtp, now)
    finally:
        sa.event.remove(database.app, "before_cursor_execute", dead_when_recording)
    assert len(server.arrivals) == 1
    with tenant_transaction(database.app, tenant.tenant_id) as conn:
        assert conn.execute(sa.text("select status from app.sent_emails")).scalar() == "sending"
        conn.execute(
            store.SUPPRESS,
            {"email": "ann@example.com", "reason": "unsubscribe", "detail": None, "now": now},
        )
        conn.execute(_UNSUBSCRIBE, {"email": "ann@example.com", "now": now})

    report = send_due(database.app, server.smtp, now + LEASE + timedelta(minutes=1))
    assert (report.unknown, report.exited["contact unsubscribed"]) == (1, 1)
    with tenant_transaction(database.app, tenant.tenant_id) as conn:
        row = conn.execute(
            sa.text(
                "select m.status, cc.status as enrollment from app.sent_emails m "
                "join app.campaign_contacts cc on cc.id = m.campaign_contact_id"
            )
        ).one()
    assert tuple(row) == ("unknown", "exited")
    assert len(server.arrivals) == 1
