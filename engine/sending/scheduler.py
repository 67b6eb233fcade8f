"""The scheduler between store and messenger: claim → render → SMTP → record → advance.

Progress lives in the database, never only in memory: each stage commits before the next, so
a restart resumes exactly where the last worker stopped.
"""

from __future__ import annotations

import os
import socket
import time
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
from engine.templates import (
    Renderer,
    RendererError,
    RenderLimits,
    TemplateRenderError,
    contact_context,
)
from engine.tenants import all_tenants


@dataclass(frozen=True)
class Config:
    batch_size: int = 500
    lease: timedelta = timedelta(minutes=5)
    max_attempts: int = 5
    retry_backoff: timedelta = timedelta(minutes=1)
    max_batches_per_tenant: int = 100
    #: Time, output and memory limits of rendering one message's templates.
    render: RenderLimits = field(default_factory=RenderLimits)

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
class _Run:
    """What every stage of one `send_due` call shares."""

    app: Engine
    sink: SmtpServer
    config: Config
    env: Mapping[str, str]
    report: SendReport
    worker: str
    renderer: Renderer


@dataclass(frozen=True)
class _Rendered:
    subject: str
    body_text: str
    body_html: str | None


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
    One item that fails (its template, its address, its data) ends only itself, with a reason.
    """
    report = SendReport()
    first = True
    with Renderer(config.render) as renderer:
        run = _Run(app, sink, config, env, report, worker or default_worker_name(), renderer)
        for tenant_id in tenants if tenants is not None else [t for t, _ in all_tenants(app)]:
            for _ in range(config.max_batches_per_tenant):
                batch_now = now if first or clock is None else clock()
                first = False
                with tenant_transaction(app, tenant_id) as conn:
                    rows = store.claim(conn, run.worker, batch_now, config.lease, config.batch_size)
                if not rows:
                    break
                report.claimed += len(rows)
                _process(run, tenant_id, rows, batch_now)
                if on_batch:
                    on_batch(report)
    return report


def _process(run: _Run, tenant_id: uuid.UUID, rows: list[sa.Row], now: datetime) -> None:
    """One claimed batch: render (no transaction open), prepare, deliver, record."""
    rendered, deferred = _render_batch(run, rows)

    pending: list[_Pending] = []
    with tenant_transaction(run.app, tenant_id) as conn:
        for row in rows:
            if row.enrollment_id in deferred:
                # Released now, claimed again by the next batch with a fresh lease.
                store.reschedule(conn, row.enrollment_id, now, now, run.worker)
                continue
            item = _for_one_item(
                conn, run, row, now, lambda row=row: _prepare(conn, run, row, rendered, now)
            )
            if item is not None:
                pending.append(item)

    outcomes = _deliver(run, pending)

    with tenant_transaction(run.app, tenant_id) as conn:
        for item, delivery in outcomes:
            _for_one_item(
                conn,
                run,
                item.row,
                now,
                lambda item=item, delivery=delivery: _record(conn, run, item, delivery, now),
                settled=False,
            )


def _render_batch(
    run: _Run, rows: list[sa.Row]
) -> tuple[dict[uuid.UUID, _Rendered | TemplateRenderError], set[uuid.UUID]]:
    """Render the batch's emails within a third of the lease; the rest is deferred.

    Each item may take up to the render time limit, so a batch of slow templates could
    outlast its lease and be claimed by another worker meanwhile. Rendering stops when a third
    of the lease (real time, not the run's `now`) is spent; the first item always renders, so
    every batch makes progress.
    """
    budget = run.config.lease.total_seconds() / 3
    started = time.monotonic()
    rendered: dict[uuid.UUID, _Rendered | TemplateRenderError] = {}
    deferred: set[uuid.UUID] = set()
    for row in rows:
        if not _needs_email(row):
            continue
        if rendered and time.monotonic() - started > budget:
            deferred.add(row.enrollment_id)
        else:
            rendered[row.enrollment_id] = _render(run, row)
    return rendered, deferred


def _needs_email(row: sa.Row) -> bool:
    return (
        row.step_id is not None
        and not row.suppressed
        and row.step_type == "email"
        and row.sender_id is not None
        and row.message_status in (None, "queued")
    )


def _render(run: _Run, row: sa.Row) -> _Rendered | TemplateRenderError:
    """The message's texts for this contact, or the template's error (which ends only it)."""
    parts = {"subject": row.subject, "body_text": row.body_text, "body_html": row.body_html}
    try:
        texts = run.renderer.render(
            parts, contact_context(row._mapping), where=f"step {row.step_order}"
        )
    except TemplateRenderError as exc:
        return exc
    except RendererError:
        raise  # no worker process: not this item's fault, so the run stops loudly
    except Exception as exc:  # e.g. contact data that cannot be handed to the worker
        return TemplateRenderError(f"step {row.step_order}: {_describe(exc)}")
    return _Rendered(
        subject=_one_line(texts["subject"] or ""),
        body_text=texts["body_text"] or "",
        body_html=texts["body_html"] or None,
    )


def _item_failure(exc: Exception) -> bool:
    """Whether `exc` is about one item (its data), not the database or the code as a whole.

    A lost connection, a deadlock or a statement that does not fit the schema fails every item
    alike: those stop the run loudly (leases expire, a later run resumes), instead of ending
    every enrollment of the batch with a reason that is not theirs.
    """
    if isinstance(exc, sa.exc.DBAPIError):
        return isinstance(exc, sa.exc.DataError | sa.exc.IntegrityError) and not (
            exc.connection_invalidated
        )
    return not isinstance(exc, sa.exc.SQLAlchemyError | RendererError)


def _describe(exc: Exception) -> str:
    cause = exc.orig if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None else exc
    first_line = (str(cause).strip().splitlines() or [""])[0]
    return f"{cause.__class__.__name__}: {first_line}"


def _for_one_item(
    conn: sa.Connection,
    run: _Run,
    row: sa.Row,
    now: datetime,
    action: Callable[[], _Pending | None],
    *,
    settled: bool = True,
) -> _Pending | None:
    """Run `action` for one item in a savepoint, so its failure undoes only its own writes.

    The item then exits with the reason (`settled`), or, when its SMTP conversation already
    happened, is left `sending` for a later run to mark in doubt (never sent twice).
    """
    try:
        with conn.begin_nested():
            return action()
    except Exception as exc:
        if not _item_failure(exc):
            raise
        reason = _describe(exc)
        if settled:
            reason = f"could not prepare the message: {reason}"
            store.exit_enrollment(conn, row.enrollment_id, reason, now, run.worker)
            run.report.failed += 1
        else:
            reason = f"could not record the outcome: {reason}"
        run.report.errors.append(f"{row.email}: {reason}")
        return None


def _one_line(text: str) -> str:
    """Header values cannot hold line breaks (a template's or a CSV cell's)."""
    return " ".join(text.split())


def _prepare(
    conn: sa.Connection,
    run: _Run,
    row: sa.Row,
    rendered: Mapping[uuid.UUID, _Rendered | TemplateRenderError],
    now: datetime,
) -> _Pending | None:
    """Settle what needs no SMTP; for an email, write its message row before any SMTP."""
    report, worker = run.report, run.worker

    def leave(reason: str) -> None:
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
        return _prepare_email(conn, run, row, rendered.get(row.enrollment_id), now)
    return None


def _prepare_email(
    conn: sa.Connection,
    run: _Run,
    row: sa.Row,
    texts: _Rendered | TemplateRenderError | None,
    now: datetime,
) -> _Pending | None:
    """Write the message row (or pick up the existing one) before any SMTP traffic."""
    report, worker = run.report, run.worker
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
    if not isinstance(texts, _Rendered):
        error = texts or TemplateRenderError(f"step {row.step_order}: not rendered")
        store.exit_enrollment(conn, row.enrollment_id, f"template error: {error}", now, worker)
        report.errors.append(f"{row.email}: {error}")
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
        message_row_id = store.begin_message(conn, row, texts.subject, message_id, now)
        attempt = 1
        if message_row_id is None:  # another worker created it meanwhile
            return None
    email = OutgoingEmail(
        message_id=message_id,
        sender_email=row.sender_email,
        sender_name=_one_line(row.sender_name) if row.sender_name else None,
        recipient=row.email,
        subject=texts.subject,
        body_text=texts.body_text,
        body_html=texts.body_html,
        date=now,
        headers={"List-Unsubscribe": f"<mailto:{row.sender_email}?subject=unsubscribe>"},
    )
    return _Pending(row, message_row_id, email, attempt)


def _deliver(run: _Run, pending: list[_Pending]) -> list[tuple[_Pending, Delivery]]:
    """One SMTP conversation per server; a sender that cannot be used is a configuration
    problem, retried with its reason (nothing is sent for it, no login is attempted)."""
    by_server: dict[SmtpServer | str, list[_Pending]] = defaultdict(list)
    for item in pending:
        try:
            server = smtp_server_for(item.row, run.sink, tenant=item.row.tenant_name, env=run.env)
        except SenderConfigError as exc:
            server = str(exc)
        except Exception as exc:  # a value the database let through but SMTP cannot use
            server = f"sender {item.row.sender_email}: {_describe(exc)}"
        by_server[server].append(item)
    outcomes: list[tuple[_Pending, Delivery]] = []
    for server, items in by_server.items():
        if isinstance(server, str):
            outcomes += [(item, Delivery(Outcome.RETRY, server)) for item in items]
            continue
        try:
            deliveries = deliver(server, [i.email for i in items])
        except Exception as exc:  # a fault in the messenger: these may or may not have gone
            reason = f"the messenger failed: {_describe(exc)}"
            run.report.errors.append(f"{server.host}:{server.port}: {reason}")
            deliveries = [Delivery(Outcome.UNKNOWN, reason) for _ in items]
        outcomes += zip(items, deliveries, strict=True)
    return outcomes


@dataclass(frozen=True)
class _Settlement:
    """What an SMTP outcome does: the message's status, the enrollment's next move, and the
    report's counter."""

    status: str
    enrollment: str  # advance | reschedule | exit | bounce
    counter: str
    exit_reason: str | None = None
    reported: bool = False  # also listed in the report's errors


_SETTLEMENTS = {
    Outcome.SENT: _Settlement("sent", "advance", "sent"),
    Outcome.BOUNCED: _Settlement("bounced", "bounce", "bounced", "bounced"),
    Outcome.REJECTED: _Settlement("failed", "exit", "failed", "message rejected", True),
    # It may have arrived: never sent again.
    Outcome.UNKNOWN: _Settlement("unknown", "advance", "in_doubt"),
    Outcome.RETRY: _Settlement("queued", "reschedule", "retrying"),
}
_GIVE_UP = _Settlement("failed", "exit", "failed", "send failed", True)


def _record(
    conn: sa.Connection, run: _Run, item: _Pending, delivery: Delivery, now: datetime
) -> None:
    row, worker = item.row, run.worker
    error = f"{delivery.code or ''} {delivery.response}".strip()
    settlement = _SETTLEMENTS[delivery.outcome]
    values: dict[str, object] = {"error": error}
    if delivery.outcome is Outcome.RETRY and item.attempt >= run.config.max_attempts:
        settlement = _GIVE_UP
        values = {"error": f"gave up after {item.attempt} attempts: {error}"}
    elif delivery.outcome is Outcome.RETRY:
        retry_at = now + run.config.backoff(item.attempt)
        values["next_attempt_at"] = retry_at
    elif delivery.outcome is Outcome.SENT:
        values = {"response": delivery.response, "sent_at": now}

    # False: our lease ran out and another worker settled this message meanwhile.
    if not store.record(conn, item.message_row_id, settlement.status, now, **values):
        return
    if settlement.enrollment == "advance":
        sent_at = now if delivery.outcome is Outcome.SENT else None
        store.advance(
            conn, row.enrollment_id, row.step_id, now, worker, next_run_at=now, sent_at=sent_at
        )
    elif settlement.enrollment == "reschedule":
        store.reschedule(conn, row.enrollment_id, values["next_attempt_at"], now, worker)
    else:
        if settlement.enrollment == "bounce":
            conn.execute(
                store.SUPPRESS,
                {"email": row.email, "reason": "bounce", "detail": error, "now": now},
            )
            conn.execute(
                store.MARK_CONTACT, {"status": "bounced", "contact_id": row.contact_id, "now": now}
            )
        store.exit_enrollment(conn, row.enrollment_id, settlement.exit_reason, now, worker)
    counter = settlement.counter
    setattr(run.report, counter, getattr(run.report, counter) + 1)
    if settlement.reported:
        run.report.errors.append(f"{row.email}: {error}")
