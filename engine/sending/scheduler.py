"""The scheduler between store and messenger: claim → render → SMTP → record → advance.

Progress lives in the database, never only in memory: each stage commits before the next, so
a restart resumes exactly where the last worker stopped.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from engine.db import tenant_transaction
from engine.senders import SenderConfigError, SmtpServer, smtp_server_for
from engine.sending import store
from engine.sending.messenger import Delivery, Outcome, OutgoingEmail, deliver
from engine.templates import TemplateRenderError, contact_context, render
from engine.tenants import all_tenants


@dataclass(frozen=True)
class Config:
    batch_size: int = 500
    lease: timedelta = timedelta(minutes=5)
    max_attempts: int = 5
    retry_backoff: timedelta = timedelta(minutes=1)
    max_batches_per_tenant: int = 100

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.max_attempts < 1 or self.max_batches_per_tenant < 1:
            raise ValueError("batch_size, max_attempts and max_batches_per_tenant must be >= 1")
        if self.lease <= timedelta(0):
            raise ValueError("lease must be positive")

    def backoff(self, attempt: int) -> timedelta:
        return self.retry_backoff * (2 ** (attempt - 1))


@dataclass
class SendReport:
    claimed: int = 0
    sent: int = 0
    retrying: int = 0
    failed: int = 0
    bounced: int = 0
    suppressed: int = 0
    in_doubt: int = 0
    waits: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in self.__dict__.items() if isinstance(v, int)}


@dataclass(frozen=True)
class _Pending:
    row: sa.Row
    message_row_id: uuid.UUID
    email: OutgoingEmail
    attempt: int


def default_worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def send_due(
    app: Engine,
    sink: SmtpServer,
    now: datetime,
    *,
    config: Config = Config(),
    worker: str | None = None,
    env: Mapping[str, str] = os.environ,
    on_batch: Callable[[SendReport], None] | None = None,
    tenants: list[uuid.UUID] | None = None,
    clock: Callable[[], datetime] | None = None,
) -> SendReport:
    """Work through every due enrollment of `tenants` (default: all); return what happened.

    `now` is the time of the first batch; with a `clock`, each later batch is claimed, leased
    and recorded at the clock's time instead, so a long run never claims with a stale lease.
    """
    worker = worker or default_worker_name()
    report = SendReport()
    first = True
    for tenant_id in tenants if tenants is not None else [t for t, _ in all_tenants(app)]:
        for _ in range(config.max_batches_per_tenant):
            batch_now = now if first or clock is None else clock()
            first = False
            with tenant_transaction(app, tenant_id) as conn:
                rows = store.claim(conn, worker, batch_now, config.lease, config.batch_size)
            if not rows:
                break
            report.claimed += len(rows)
            _process(app, tenant_id, rows, sink, batch_now, config, env, report, worker)
            if on_batch:
                on_batch(report)
    return report


def _process(
    app: Engine,
    tenant_id: uuid.UUID,
    rows: list[sa.Row],
    sink: SmtpServer,
    now: datetime,
    config: Config,
    env: Mapping[str, str],
    report: SendReport,
    worker: str,
) -> None:
    pending: list[_Pending] = []
    with tenant_transaction(app, tenant_id) as conn:
        for row in rows:

            def leave(reason: str, row: sa.Row = row) -> None:
                store.exit_enrollment(conn, row.enrollment_id, reason, now, worker)

            if row.step_id is None:
                leave("its current step was deleted")
            elif row.suppressed:
                leave("suppressed")
                report.suppressed += 1
            elif row.step_type == "wait":
                resume = row.wait_until or now + row.wait_duration
                store.advance(conn, row.enrollment_id, row.step_id, now, worker, next_run_at=resume)
                report.waits += 1
            elif row.step_type != "email":
                leave(f"step type {row.step_type} is not supported yet")
                report.errors.append(f"step type {row.step_type} is not supported yet")
            elif row.sender_id is None:
                # Deleted, or not this tenant's: row-level security hides another tenant's.
                leave("the campaign has no sender account")
                report.errors.append(f"campaign {row.campaign_id} has no sender account")
            else:
                item = _prepare_email(conn, row, now, report, worker)
                if item is not None:
                    pending.append(item)

    by_server: dict[SmtpServer | str, list[_Pending]] = defaultdict(list)
    for item in pending:
        try:
            by_server[smtp_server_for(item.row, sink, env)].append(item)
        except SenderConfigError as exc:
            by_server[str(exc)].append(item)
    outcomes: list[tuple[_Pending, Delivery]] = []
    for server, items in by_server.items():
        if isinstance(server, str):  # the sender cannot be used: a configuration problem
            outcomes += [(item, Delivery(Outcome.RETRY, server)) for item in items]
        else:
            outcomes += zip(items, deliver(server, [i.email for i in items]), strict=True)

    with tenant_transaction(app, tenant_id) as conn:
        for item, delivery in outcomes:
            _record(conn, item, delivery, now, config, report, worker)


def _one_line(text: str) -> str:
    """Header values cannot hold line breaks (a template's or a CSV cell's)."""
    return " ".join(text.split())


def _prepare_email(
    conn: sa.Connection, row: sa.Row, now: datetime, report: SendReport, worker: str
) -> _Pending | None:
    """Write the message row (or pick up the existing one) before any SMTP traffic."""
    if row.message_row_id is not None:
        if row.message_status == "sent":  # sent, but the worker stopped before advancing
            store.advance(conn, row.enrollment_id, row.step_id, now, worker, next_run_at=now)
            return None
        if row.message_status == "sending":
            conn.execute(store.MARK_IN_DOUBT, {"id": row.message_row_id, "now": now})
            store.advance(conn, row.enrollment_id, row.step_id, now, worker, next_run_at=now)
            report.in_doubt += 1
            return None
        if row.message_status != "queued":
            store.exit_enrollment(
                conn, row.enrollment_id, f"message {row.message_status}", now, worker
            )
            return None
    context = contact_context(row._mapping)
    try:
        subject = _one_line(render(row.subject, context, where=f"step {row.step_order} subject"))
        body_text = render(row.body_text, context, where=f"step {row.step_order} body_text")
        body_html = (
            render(row.body_html, context, where=f"step {row.step_order} body_html")
            if row.body_html
            else None
        )
    except TemplateRenderError as exc:
        store.exit_enrollment(conn, row.enrollment_id, f"template error: {exc}", now, worker)
        report.errors.append(str(exc))
        return None
    if row.message_row_id is not None:
        message_row_id = conn.execute(
            store.RETRY_MESSAGE, {"id": row.message_row_id, "now": now}
        ).scalar()
        message_id, attempt = row.message_id, row.attempts + 1
        if message_row_id is None:
            return None
    else:
        domain = row.sender_email.rsplit("@", 1)[-1]
        message_id = f"{uuid.uuid4()}@{domain}"
        message_row_id = store.begin_message(conn, row, subject, message_id, now)
        attempt = 1
        if message_row_id is None:  # another worker created it meanwhile
            return None
    email = OutgoingEmail(
        message_id=message_id,
        sender_email=row.sender_email,
        sender_name=_one_line(row.sender_name) if row.sender_name else None,
        recipient=row.email,
        subject=subject,
        body_text=body_text,
        body_html=body_html,
        date=now,
        headers={"List-Unsubscribe": f"<mailto:{row.sender_email}?subject=unsubscribe>"},
    )
    return _Pending(row, message_row_id, email, attempt)


def _record(
    conn: sa.Connection,
    item: _Pending,
    delivery: Delivery,
    now: datetime,
    config: Config,
    report: SendReport,
    worker: str,
) -> None:
    row = item.row
    error = f"{delivery.code or ''} {delivery.response}".strip()

    def record(status: str, **values: object) -> bool:
        # False: our lease ran out and another worker settled this message meanwhile.
        return store.record(conn, item.message_row_id, status, now, **values)

    def leave(reason: str) -> None:
        store.exit_enrollment(conn, row.enrollment_id, reason, now, worker)

    outcome = delivery.outcome
    if outcome is Outcome.RETRY and item.attempt >= config.max_attempts:
        if record("failed", error=f"gave up after {item.attempt} attempts: {error}"):
            leave("send failed")
            report.failed += 1
            report.errors.append(f"{row.email}: {error}")
    elif outcome is Outcome.RETRY:
        retry_at = now + config.backoff(item.attempt)
        if record("queued", error=error, next_attempt_at=retry_at):
            store.reschedule(conn, row.enrollment_id, retry_at, now, worker)
            report.retrying += 1
    elif outcome is Outcome.SENT:
        if record("sent", response=delivery.response, sent_at=now):
            store.advance(
                conn, row.enrollment_id, row.step_id, now, worker, next_run_at=now, sent_at=now
            )
            report.sent += 1
    elif outcome is Outcome.BOUNCED:
        if record("bounced", error=error):
            conn.execute(
                store.SUPPRESS,
                {"email": row.email, "reason": "bounce", "detail": error, "now": now},
            )
            conn.execute(
                store.MARK_CONTACT, {"status": "bounced", "contact_id": row.contact_id, "now": now}
            )
            leave("bounced")
            report.bounced += 1
    elif outcome is Outcome.REJECTED:
        if record("failed", error=error):
            leave("message rejected")
            report.failed += 1
            report.errors.append(f"{row.email}: {error}")
    else:  # UNKNOWN: it may have arrived; never sent again
        if record("unknown", error=error):
            store.advance(conn, row.enrollment_id, row.step_id, now, worker, next_run_at=now)
            report.in_doubt += 1
