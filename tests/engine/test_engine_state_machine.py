"""Crashes in the middle of a pass, found by the engine's state machine, each reduced to one
deterministic case: what a stopped worker leaves in doubt, and what the next pass does with it.
"""

from __future__ import annotations

import threading
import time as stopwatch
from collections import Counter

import sqlalchemy as sa

from engine.db import tenant_transaction
from engine.sending.messenger import CourierConfig
from engine.sending.scheduler import Config, send_due


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
