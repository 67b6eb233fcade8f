"""The engine pass: move sequences on, then send the due emails under their throttles.

One pass (`send_due`), per tenant, all at the pass's `now`:

1. the set-based steps (`engine.sequence.steps`): scheduled campaigns whose start has come go
   active, new list members are enrolled, enrollments of contacts who replied, unsubscribed or
   bounced exit, and every due wait, condition and action step moves on;
2. the due emails, a batch at a time: **claim** (lock due enrollments, apply the scheduling rules
   of `engine.sequence.rules` — window, start and end, campaign and sender limits, gaps, sender
   rotation — defer what cannot go now to the time it can, queue a message row for what can),
   **render** (no transaction open), then per message through the `Courier`: `sending` just
   before its own SMTP conversation, settled right after it (`_Ledger`: group transactions);
   the enrollments whose message went move on at the end of the batch;
3. campaigns with nothing left to do complete.

Progress lives in the database, never only in memory: each stage commits before the next, so
a restart resumes exactly where the last worker stopped, and a crash leaves only the
conversations under way in doubt (`unknown`, never resent).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import hashlib
import os
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from engine.db import bound_transaction, tenant_transaction
from engine.senders import SenderConfigError, SmtpServer, smtp_server_for
from engine.sending import store
from engine.sending.group import Group
from engine.sending.messenger import (
    CallbackError,
    Courier,
    CourierConfig,
    Delivery,
    Outcome,
    OutgoingEmail,
    SendJob,
)
from engine.sequence import rules, steps
from engine.templates import (
    Renderer,
    RendererError,
    RenderLimits,
    TemplateRenderError,
    contact_context,
)
from engine.tenants import all_tenants, penguin_command
from engine.tracking.links import Tracking, decorate, template_links


@dataclass(frozen=True)
class Config:
    batch_size: int = 500
    lease: timedelta = timedelta(minutes=5)
    #: Attempts of a message that 4xx or lost connections interrupt: the waits between them
    #: (rules.backoff: 5, 10, 20, 40, 80 minutes and jitter) span more than two and a half hours.
    max_attempts: int = 6
    max_batches_per_tenant: int = 1000
    #: Time, output and memory limits of rendering one message's templates.
    render: RenderLimits = field(default_factory=RenderLimits)
    #: Concurrency of the SMTP conversations (see `CourierConfig`).
    courier: CourierConfig = field(default_factory=CourierConfig)
    #: Links of the tracking server (`engine.tracking.links`): the open pixel and click links
    #: where the campaign tracks them, and the one-click unsubscribe link in every message.
    #: None: messages carry the mailto unsubscribe alone.
    tracking: Tracking | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.max_attempts < 1 or self.max_batches_per_tenant < 1:
            raise ValueError("batch_size, max_attempts and max_batches_per_tenant must be >= 1")
        if self.lease <= timedelta(0):
            raise ValueError("lease must be positive")


@dataclass
class SendReport:
    """What one pass did (or, with `dry_run`, would do)."""

    enrolled: int = 0
    advanced: int = 0
    #: Due emails looked at (each then sent, deferred, exited or finished).
    claimed: int = 0
    sent: int = 0
    retrying: int = 0
    bounced: int = 0
    failed: int = 0
    unknown: int = 0
    #: Dry runs: messages the pass would have sent.
    would_send: int = 0
    deferred: Counter[str] = field(default_factory=Counter)
    #: Messages deferred because their server could not be reached, by the reason (which names
    #: the host and port, and what to check).
    servers_down: Counter[str] = field(default_factory=Counter)
    exited: Counter[str] = field(default_factory=Counter)
    campaigns_activated: int = 0
    campaigns_completed: int = 0
    errors: list[str] = field(default_factory=list)

    def add(self, other: SendReport) -> None:
        """Count `other` in too (a tally of work committed elsewhere)."""
        for name, value in other.__dict__.items():
            if isinstance(value, int) and not isinstance(value, bool):
                setattr(self, name, getattr(self, name) + value)
        self.deferred.update(other.deferred)
        self.servers_down.update(other.servers_down)
        self.exited.update(other.exited)
        self.errors.extend(other.errors)

    def as_dict(self) -> dict[str, object]:
        """Counts for printing and run metadata: totals, and per-reason breakdowns."""
        counts: dict[str, object] = {
            k: v for k, v in self.__dict__.items() if isinstance(v, int) and not isinstance(v, bool)
        }
        counts["deferred"] = sum(self.deferred.values())
        counts["exited"] = sum(self.exited.values())
        counts["deferred_by_reason"] = dict(sorted(self.deferred.items()))
        counts["exited_by_reason"] = dict(sorted(self.exited.items()))
        counts["servers_down"] = dict(sorted(self.servers_down.items()))
        return counts


@dataclass(frozen=True)
class _Run:
    """What every stage of one `send_due` call shares."""

    app: Engine
    sink: SmtpServer
    config: Config
    env: Mapping[str, str]
    report: SendReport
    worker: str
    renderer: Renderer | None
    courier: Courier | None
    #: Outcomes are counted on the ledger's thread while the pass's thread may count others.
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class _Work:
    """One claimed email: its row, the sender and variant it got, its message row."""

    row: sa.Row
    sender: sa.Row
    campaign: sa.Row
    message_row_id: uuid.UUID
    message_id: str
    variant: int | None
    attempt: int
    subject: str = ""
    body_text: str = ""
    body_html: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    #: The templates the parts were rendered from: the links they hold are the campaign's.
    sources: dict[str, str | None] = field(default_factory=dict)
    error: str | None = None


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
    dry_run: bool = False,
) -> SendReport:
    """One engine pass over `tenants` (default: all); return what happened.

    `now` is the time of every decision and every recorded time; with a `clock`, each later
    email batch is claimed, leased and recorded at the clock's time instead, so a long run never
    claims with a stale lease. `dry_run` decides everything as a pass would, in transactions
    that are rolled back, and sends nothing. One item that fails (its template, its address, its
    data) ends only itself, with a reason.
    """
    report = SendReport()
    worker = worker or default_worker_name()
    ids = tenants if tenants is not None else [t for t, _ in all_tenants(app)]
    if dry_run:
        run = _Run(app, sink, config, env, report, worker, None, None)
        for tenant_id in ids:
            _dry_run(run, tenant_id, now)
        return report
    with Renderer(config.render) as renderer, Courier(config.courier) as courier:
        run = _Run(app, sink, config, env, report, worker, renderer, courier)
        first = True
        for tenant_id in ids:
            _refresh_statistics(app)
            with tenant_transaction(app, tenant_id) as conn:
                _run_steps(conn, report, now)
            # One batch after the other: an email step that a send made due (a p.s.) joins the
            # next batch of the same pass, as the forecast counts it.
            for _ in range(config.max_batches_per_tenant):
                batch = _prepare(run, tenant_id, now if first or clock is None else clock())
                first = False
                if not batch.claimed:
                    break
                if batch.ready:
                    _send_batch(run, tenant_id, batch)
                if on_batch:
                    on_batch(report)
            with tenant_transaction(app, tenant_id) as conn:
                report.campaigns_completed += _count(steps.complete_campaigns(conn, now))
    return report


def _refresh_statistics(app: Engine) -> None:
    """Fresh statistics for what the next statements plan on (`store.REFRESH_STATISTICS`): an
    upload, an enrollment or the batches before may have grown a table many times over."""
    with app.begin() as conn:
        conn.execute(store.REFRESH_STATISTICS)


def _count(result: object) -> int:
    if isinstance(result, Mapping):
        return sum(int(v) for v in result.values())
    return int(result or 0)


def _run_steps(conn: Connection, report: SendReport, now: datetime) -> None:
    """The set-based part of a pass: campaigns starting, enrollment, exits, wait, condition
    and action steps."""
    report.campaigns_activated += _count(steps.activate_scheduled(conn, now))
    report.enrolled += _count(steps.enroll(conn, now))
    report.unknown += store.mark_abandoned_in_doubt(conn, now)
    report.exited.update(steps.exit_stopped(conn, now))
    moved = steps.advance(conn, now)
    report.advanced += moved.advanced
    report.exited.update(moved.exited)


def _dry_run(run: _Run, tenant_id: uuid.UUID, now: datetime) -> None:
    """Everything a pass would decide at `now`, in one transaction rolled back at the end."""
    with tenant_transaction(run.app, tenant_id) as conn:
        savepoint = conn.begin_nested()
        try:
            _run_steps(conn, run.report, now)
            for _ in range(run.config.max_batches_per_tenant):
                claimed, work = _claim(conn, run, now, run.report)
                if not claimed:
                    break
                run.report.would_send += len(work)
            run.report.campaigns_completed += _count(steps.complete_campaigns(conn, now))
        finally:
            savepoint.rollback()


# --------------------------------------------------------------------------- claim


def _claim(
    conn: Connection, run: _Run, now: datetime, report: SendReport
) -> tuple[int, list[_Work]]:
    """Claim one batch of due emails; return how many were claimed and those that go now.

    Everything claimed is settled here: sent now (leased, message row queued), deferred to when
    it can go (`wait_reason`), exited, or, for messages a crashed worker left behind, finished.
    What it did is counted in `report`.
    """
    rows = conn.execute(store.CLAIM, {"now": now, "limit": run.config.batch_size}).all()
    if not rows:
        return 0, []
    report.claimed += len(rows)
    campaigns = {
        c.id: c
        for c in conn.execute(
            store.CAMPAIGNS, {"ids": list({r.campaign_id for r in rows}), "now": now}
        )
    }
    sender_ids = {s for c in campaigns.values() for s in c.senders}
    sender_ids |= {r.step_sender_id for r in rows if r.step_sender_id is not None}
    sender_ids |= {r.message_sender_id for r in rows if r.message_sender_id is not None}
    senders = {s.id: s for s in conn.execute(store.SENDERS, {"ids": list(sender_ids), "now": now})}
    optimized = [
        r.contact_id for r in rows if campaigns[r.campaign_id].send_strategy == "optimized"
    ]
    opens = (
        {o.contact_id: o.opens for o in conn.execute(store.OPENS, {"contact_ids": optimized})}
        if optimized
        else {}
    )

    sent_today = store.campaign_sends_today(
        conn, {cid: c.timezone for cid, c in campaigns.items()}, now
    )
    campaign_states = {
        cid: _campaign_state(c, sent_today[cid], now) for cid, c in campaigns.items()
    }
    sender_states = {sid: _sender_state(s, now) for sid, s in senders.items()}

    defers: list[tuple[uuid.UUID, datetime, str]] = []
    exits: list[tuple[uuid.UUID, str]] = []
    fresh: list[tuple[sa.Row, uuid.UUID, int | None, str]] = []
    retries: list[_Work] = []
    for row in rows:
        campaign = campaigns[row.campaign_id]
        state = campaign_states[row.campaign_id]
        if row.message_row_id is not None and row.message_status != "queued":
            _finish_left_behind(conn, run, row, now, report)
            continue
        if row.suppressed or row.contact_status != "active":
            exits.append(
                (row.enrollment_id, "suppressed" if row.suppressed else row.contact_status)
            )
            continue
        tz = rules.contact_timezone(row.timezone, state.schedule.tz)
        open_hour = (
            rules.usual_open_hour(opens.get(row.contact_id, ()), tz)
            if campaign.send_strategy == "optimized"
            else None
        )
        if row.message_row_id is not None:
            # A retry (or a message claimed before a crash): it keeps its sender and has
            # taken its counts already; only the schedule applies.
            if state.schedule.ended(now):
                exits.append((row.enrollment_id, rules.CAMPAIGN_ENDED))
                continue
            at, reason = rules.earliest_send(state.schedule, tz, now, open_hour)
            if reason is not None:
                defers.append((row.enrollment_id, at, reason))
                continue
            sender = senders.get(row.message_sender_id)
            if sender is None:
                exits.append((row.enrollment_id, rules.NO_SENDER))
                continue
            retries.append(
                _Work(
                    row,
                    sender,
                    campaign,
                    row.message_row_id,
                    row.message_id,
                    int(row.message_variant) if row.message_variant else None,
                    row.attempts + 1,
                )
            )
            continue
        try:
            variant = _variant(row)
        except (TypeError, ValueError, AttributeError) as exc:
            # Variants written by other means than a campaign file: the step cannot run, and
            # only the enrollments standing on it end (as engine.sequence.steps does).
            exits.append((row.enrollment_id, steps.ExitReason.INVALID_STEP.value))
            report.errors.append(f"{row.email}: step {row.step_key}: variants: {_describe(exc)}")
            continue
        item = rules.Item(row.campaign_id, tz, row.step_sender_id, open_hour)
        decision = rules.decide(item, state, sender_states, now)
        if isinstance(decision, rules.Exit):
            exits.append((row.enrollment_id, decision.reason))
        elif isinstance(decision, rules.Defer):
            # No known time (every sender paused): looked at again in a day, or when a sender
            # resumes (`penguin sender resume` makes these due at once).
            until = decision.until or now + timedelta(days=1)
            defers.append((row.enrollment_id, until, decision.reason))
        else:
            domain = senders[decision.sender_id].email.rsplit("@", 1)[-1]
            fresh.append((row, decision.sender_id, variant, f"{uuid.uuid4()}@{domain}"))

    store.defer(conn, *_columns(defers, 3), now=now)
    store.exit_many(conn, *_columns(exits, 2), now=now)
    for _, _, reason in defers:
        report.deferred[reason] += 1
    for _, reason in exits:
        report.exited[reason] += 1

    work = list(retries)
    if fresh:
        queued = {
            q.campaign_contact_id: q.id
            for q in conn.execute(
                store.QUEUE_MESSAGES,
                {
                    "enrollment_ids": [r.enrollment_id for r, *_ in fresh],
                    "campaign_ids": [r.campaign_id for r, *_ in fresh],
                    "step_ids": [r.step_id for r, *_ in fresh],
                    "contact_ids": [r.contact_id for r, *_ in fresh],
                    "sender_ids": [s for _, s, _, _ in fresh],
                    "recipients": [r.email for r, *_ in fresh],
                    "message_ids": [m for *_, m in fresh],
                    "variants": [None if v is None else str(v) for _, _, v, _ in fresh],
                    "now": now,
                },
            )
        }
        for row, sender_id, variant, message_id in fresh:
            if row.enrollment_id in queued:
                work.append(
                    _Work(
                        row,
                        senders[sender_id],
                        campaigns[row.campaign_id],
                        queued[row.enrollment_id],
                        message_id,
                        variant,
                        1,
                    )
                )
    store.lease(conn, [w.row.enrollment_id for w in work], run.worker, now, run.config.lease)
    return len(rows), work


def _columns(rows: list[tuple], width: int) -> list[list]:
    return [[r[i] for r in rows] for i in range(width)]


def _campaign_state(c: sa.Row, sent_today: int, now: datetime) -> rules.CampaignState:
    tz = rules.campaign_timezone(c.timezone)
    schedule = rules.Schedule(
        tz=tz,
        window=rules.Window(c.send_window_start, c.send_window_end, frozenset(c.send_days)),
        strategy=c.send_strategy,
        start_at=c.start_at,
        end_at=c.end_at,
        daily_limit=c.daily_limit,
    )
    return rules.CampaignState(
        c.id, schedule, tuple(c.senders), rules.local_day(now, tz), sent_today
    )


def _sender_state(s: sa.Row, now: datetime) -> rules.SenderState:
    return rules.SenderState(
        s.id,
        s.daily_limit,
        timedelta(seconds=s.min_gap_seconds),
        paused=not s.is_active,
        day=rules.utc_day(now),
        sent=s.sent_today,
        last=s.last_queued_at,
    )


def _variant(row: sa.Row) -> int | None:
    """The A/B variant (1-based) of this enrollment at this step: deterministic, in proportion
    to the weights (sha256 of enrollment and step)."""
    if not row.variants:
        return None
    weights = [max(int(v.get("weight", 1)), 0) for v in row.variants]
    total = sum(weights)
    if total <= 0:
        return 1
    digest = hashlib.sha256(f"{row.enrollment_id}:{row.step_id}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") % total
    for index, weight in enumerate(weights, start=1):
        if point < weight:
            return index
        point -= weight
    return len(weights)


def _finish_left_behind(
    conn: Connection, run: _Run, row: sa.Row, now: datetime, report: SendReport
) -> None:
    """A message a stopped worker left: `sent` moves on, `sending` is in doubt (never resent),
    a settled failure ends the enrollment. The lease has run out, so it is ours to move."""
    run_lease = [row.enrollment_id]
    store.lease(conn, run_lease, run.worker, now, run.config.lease)
    if row.message_status == "sending":
        if conn.execute(store.MARK_IN_DOUBT, {"id": row.message_row_id, "now": now}).rowcount:
            report.unknown += 1
        store.advance(conn, row.enrollment_id, row.step_id, now, run.worker)
    elif row.message_status in ("sent", "unknown"):
        # Delivered, or in doubt: its worker stopped before moving the enrollment on.
        sent_at = row.message_sent_at if row.message_status == "sent" else None
        store.advance(conn, row.enrollment_id, row.step_id, now, run.worker, sent_at=sent_at)
    else:
        reason = "bounced" if row.message_status == "bounced" else "send failed"
        store.exit_enrollment(conn, row.enrollment_id, reason, now, run.worker)
        report.exited[reason] += 1


# --------------------------------------------------------------------------- render and send


@dataclass(frozen=True)
class _Batch:
    """A claimed batch, rendered: what goes (`ready`), at the time it was claimed."""

    now: datetime
    claimed: int
    ready: list[_Work]
    tenant: str


def _prepare(run: _Run, tenant_id: uuid.UUID, now: datetime) -> _Batch:
    """Claim one batch and render it (no transaction open while rendering). A message whose
    template fails ends alone; what rendering could not reach within a third of the lease goes
    back, due now, for a later batch with a fresh lease."""
    assert run.renderer is not None
    tally = SendReport()
    _refresh_statistics(run.app)
    with tenant_transaction(run.app, tenant_id) as conn:
        claimed, work = _claim(conn, run, now, tally)
    budget = run.config.lease.total_seconds() / 3
    started = time.monotonic()
    ready: list[_Work] = []
    late: list[_Work] = []
    for item in work:
        if ready and time.monotonic() - started > budget:
            late.append(item)  # rendering is slow: the rest goes with a fresh lease
            continue
        _render(run, item)
        _track(run, tenant_id, item)
        ready.append(item)
    broken = [w for w in ready if w.error is not None]
    with tenant_transaction(run.app, tenant_id) as conn:
        tenant = conn.execute(store.TENANT_NAME).scalar_one()
        for item in broken:
            conn.execute(
                store.FAIL_UNSENT, {"id": item.message_row_id, "error": item.error, "now": now}
            )
            store.exit_enrollment(conn, item.row.enrollment_id, item.error, now, run.worker)
            tally.exited["template error"] += 1
            tally.errors.append(f"{item.row.email}: {item.error}")
        store.defer(
            conn,
            [w.row.enrollment_id for w in late],
            [now for _ in late],
            ["retry" for _ in late],
            now,
        )
    with run.lock:
        run.report.add(tally)
    return _Batch(now, claimed, [w for w in ready if w.error is None], tenant)


def _send_batch(run: _Run, tenant_id: uuid.UUID, batch: _Batch) -> None:
    """Hand the batch's messages to the courier, each marked `sending` just before its
    conversation and settled right after it; then move on the enrollments whose message went."""
    now = batch.now
    jobs: list[SendJob] = []
    skipped: list[_Work] = []
    with _Ledger(run, tenant_id, now) as ledger:
        _deliver(run, ledger, batch.tenant, batch.ready, jobs, skipped, now)
    # The enrollments whose message went move on, in one statement; those claimed but not
    # sent (paused, suppressed meanwhile) are released for the next pass to decide.
    with tenant_transaction(run.app, tenant_id) as conn:
        conn.execute(
            store.ADVANCE_SENT,
            {
                "enrollment_ids": [w.row.enrollment_id for w in batch.ready],
                "worker": run.worker,
                "now": now,
            },
        )
        if skipped:
            conn.execute(
                store.RELEASE,
                {"ids": [w.row.enrollment_id for w in skipped], "worker": run.worker, "now": now},
            )


def _deliver(
    run: _Run,
    ledger: _Ledger,
    tenant: str,
    ready: list[_Work],
    jobs: list[SendJob],
    skipped: list[_Work],
    now: datetime,
) -> None:
    """Hand the rendered messages to the courier, each marked and settled through `ledger`."""
    assert run.courier is not None
    for item in ready:
        try:
            server = smtp_server_for(item.sender, run.sink, tenant=tenant, env=run.env)
        except SenderConfigError as exc:
            server = None
            reason = str(exc)
        except Exception as exc:  # a value the database let through but SMTP cannot use
            server = None
            reason = f"sender {item.sender.email}: {_describe(exc)}"
        if server is None:
            _settle_unsent(run, ledger.tenant_id, item, now, reason)
            continue
        jobs.append(_job(run, ledger.group, item, server, tenant, now, skipped))
    if jobs:
        errors: list[BaseException] = []
        try:
            run.courier.send(jobs)
        except CallbackError as exc:
            errors.extend(exc.exceptions)
        finally:
            ledger.group.flush()  # the outcomes still posted; their failures are kept
        # Database trouble while recording: those enrollments keep their lease and fall due
        # again when it runs out; their messages stay `sending` and become `unknown`.
        errors.extend(error for _, error in ledger.group.failures)
        with run.lock:
            for error in errors:
                run.report.errors.append(f"could not record a message: {_describe(error)}")


def _render(run: _Run, item: _Work) -> None:
    row = item.row
    if item.variant is not None and row.variants and item.variant <= len(row.variants):
        chosen = row.variants[item.variant - 1]
        parts = {
            "subject": chosen.get("subject"),
            "body_text": chosen.get("text"),
            "body_html": chosen.get("html"),
        }
    else:
        parts = {"subject": row.subject, "body_text": row.body_text, "body_html": row.body_html}
    where = f"step {row.step_key}"
    item.sources = parts
    try:
        assert run.renderer is not None
        texts = run.renderer.render(parts, contact_context(row._mapping), where=where)
    except TemplateRenderError as exc:
        item.error = f"template error: {exc}"
        return
    except RendererError:
        raise  # no worker process: not this item's fault, so the run stops loudly
    except Exception as exc:  # e.g. contact data that cannot be handed to the worker
        item.error = f"template error: {where}: {_describe(exc)}"
        return
    item.subject = _one_line(texts["subject"] or "")
    item.body_text = texts["body_text"] or ""
    item.body_html = texts["body_html"] or None


def _mailto(item: _Work) -> str:
    return f"mailto:{item.sender.email}?subject=unsubscribe"


def _track(run: _Run, tenant_id: uuid.UUID, item: _Work) -> None:
    """The tracking server's links in a rendered message (`engine.tracking.links`)."""
    tracking = run.config.tracking
    if tracking is None or item.error is not None:
        return
    if not tracking.public and item.sender.smtp_host:
        # PENGUIN_PUBLIC_URL unset: links to this machine would reach nobody outside it.
        return
    tracked = decorate(
        tracking,
        tenant_id,
        item.message_row_id,
        body_text=item.body_text,
        body_html=item.body_html,
        mailto=_mailto(item),
        opens=item.campaign.track_opens,
        clicks=item.campaign.track_clicks,
        links_allowed=template_links(item.sources.get("body_text"), item.sources.get("body_html")),
    )
    item.body_text, item.body_html = tracked.body_text, tracked.body_html
    item.headers = tracked.headers


def _email(item: _Work, now: datetime) -> OutgoingEmail:
    sender, campaign = item.sender, item.campaign
    name = campaign.from_name or sender.display_name
    headers = dict(item.headers) or {"List-Unsubscribe": f"<{_mailto(item)}>"}
    if campaign.reply_to:
        headers["Reply-To"] = _one_line(campaign.reply_to)
    return OutgoingEmail(
        message_id=item.message_id,
        sender_email=sender.email,
        sender_name=_one_line(name) if name else None,
        recipient=item.row.email,
        subject=item.subject,
        body_text=item.body_text,
        body_html=item.body_html,
        date=now,
        headers=headers,
    )


class _Marked(enum.Enum):
    """What marking a message `sending` found."""

    GO = "go"  # marked: its conversation starts now
    SKIP = "skip"  # paused, suppressed or taken over meanwhile: released, nothing sent
    FAILED = "failed"  # its own data was refused: it ended alone, nothing sent


@dataclass(frozen=True)
class _Settle:
    """A conversation's outcome, to record: `marked` is whether its message was `sending`."""

    item: _Work
    delivery: Delivery
    marked: bool


#: What the ledger of a batch records: a message to mark `sending`, or an outcome.
_Entry = _Work | _Settle


#: The ledger's connection: its statements, the same few again and again, keep one generic plan
#: each (planning a mark took longer than running it), and a group that waits for a lock or
#: the server longer than any mark should fails instead of holding every conversation up.
_LEDGER_SETTINGS = (
    "set plan_cache_mode = force_generic_plan",
    "set lock_timeout = '30s'",
    "set statement_timeout = '60s'",
)


class _Ledger:
    """The courier's callbacks of one tenant's batch, in group transactions
    (`engine.sending.group`): many conversations, one commit per group, not two per message.

    An outcome is posted, not waited for: it is recorded in the transaction that marks the
    next message, settlements first. So each message costs one share of a transaction, and a
    crash still leaves at most the courier's concurrency in doubt: a message is marked only
    once every outcome posted before it is committed with it, so each slot holds at most one
    message `sending` (in conversation, or its outcome posted and not yet committed). What is
    still posted when the batch ends is recorded by `flush`.

    The groups run one after the other on a connection the ledger holds for the batch
    (`_LEDGER_SETTINGS`): no pool checkout, liveness ping and reset per group.
    """

    def __init__(self, run: _Run, tenant_id: uuid.UUID, now: datetime) -> None:
        self.run, self.tenant_id, self.now = run, tenant_id, now
        self.group: Group[_Entry, _Marked | None] = Group(self._many, self._one, _item_failure)
        self._conn: Connection | None = None

    def __enter__(self) -> _Ledger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.group.close()  # first: no group may still be using the connection
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if not conn.invalidated:
                conn.exec_driver_sql("reset all")  # it goes back to the pool as it came
                conn.commit()
        except Exception:
            conn.invalidate()
        finally:
            conn.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Connection]:
        conn = self._conn
        if conn is None or conn.invalidated:  # a lost connection is replaced
            if conn is not None:
                conn.close()
            conn = self._conn = self.run.app.connect()
            for setting in _LEDGER_SETTINGS:
                conn.exec_driver_sql(setting)
            conn.commit()
        try:
            with bound_transaction(conn, self.tenant_id):
                yield conn
        except BaseException:
            # A commit that failed leaves the server's transaction open, with its locks: the
            # connection is given up (the server rolls it back) and the next group gets another.
            conn.invalidate()
            raise

    def _many(self, entries: Sequence[_Entry]) -> list[_Marked | None]:
        run, now = self.run, self.now
        settles = [e for e in entries if isinstance(e, _Settle)]
        marks = [e for e in entries if isinstance(e, _Work)]
        sent = [s for s in settles if s.marked and s.delivery.outcome is Outcome.SENT]
        others = [s for s in settles if not (s.marked and s.delivery.outcome is Outcome.SENT)]
        tally = SendReport()
        marked: set[uuid.UUID] = set()
        with self._transaction() as conn:
            if others:  # rare: outcomes that move their enrollments, locked first in id order
                ids = [s.item.row.enrollment_id for s in others]
                conn.execute(store.LOCK_ENROLLMENTS, {"ids": ids})
                for s in others:
                    _record(conn, run, tally, s.item, s.delivery, now, marked=s.marked)
            # Then the message rows alone: the delivered ones recorded and the next ones marked
            # in one statement (marks last: the transaction waits for no lock once it holds them).
            params = {
                "sent_ids": [s.item.message_row_id for s in sent],
                "responses": [s.delivery.response for s in sent],
                "ids": [i.message_row_id for i in marks],
                "subjects": [i.subject for i in marks],
                "worker": run.worker,
                "now": now,
            }
            if sent and marks:
                rows = conn.execute(store.RECORD_SENT_AND_MARK, params).all()
                tally.sent += sum(r.what == "sent" for r in rows)
                marked = {r.id for r in rows if r.what == "marked"}
            elif sent:
                tally.sent += len(conn.execute(store.RECORD_SENT, params).all())
            elif marks:
                marked = set(conn.execute(store.MARK_SENDING, params).scalars())
        with run.lock:  # counted once committed: a group done again alone is not counted twice
            run.report.add(tally)
        return [
            None
            if isinstance(e, _Settle)
            else _Marked.GO
            if e.message_row_id in marked
            else _Marked.SKIP
            for e in entries
        ]

    def _one(self, entry: _Entry) -> _Marked | None:
        run, now = self.run, self.now
        if isinstance(entry, _Settle):
            return self._many([entry])[0]
        try:
            return self._many([entry])[0]
        except Exception as exc:
            if not _item_failure(exc):
                raise
            # This message's own data (a NUL in its subject): it ends alone, nothing is sent.
            reason = f"could not prepare the message: {_describe(exc)}"
        item = entry
        with self._transaction() as conn:
            conn.execute(store.LOCK_ENROLLMENT, {"id": item.row.enrollment_id})
            failed = {"id": item.message_row_id, "error": reason, "now": now}
            conn.execute(store.FAIL_UNSENT, failed)
            store.exit_enrollment(conn, item.row.enrollment_id, reason, now, run.worker)
        with run.lock:
            run.report.failed += 1
            run.report.exited["could not prepare the message"] += 1
            run.report.errors.append(f"{item.row.email}: {reason}")
        return _Marked.FAILED


def _job(
    run: _Run,
    ledger: Group[_Entry, _Marked | None],
    item: _Work,
    server: SmtpServer,
    tenant: str,
    now: datetime,
    skipped: list[_Work],
) -> SendJob:
    marked = False

    async def before() -> bool:
        nonlocal marked
        outcome = await ledger.submit(item)
        marked = outcome is _Marked.GO
        if outcome is _Marked.SKIP:
            skipped.append(item)
        return marked

    async def after(delivery: Delivery) -> None:
        if delivery.outcome is Outcome.SERVER_DOWN:
            response = f"{delivery.response}; {_what_to_check(run, server, item, tenant)}"
            delivery = dataclasses.replace(delivery, response=response)
        ledger.post(_Settle(item, delivery, marked))

    return SendJob(server, _email(item, now), before, after)


def _what_to_check(run: _Run, server: SmtpServer, item: _Work, tenant: str) -> str:
    """What a person should look at when `server` cannot be reached (said with the host and
    port in the message's recorded response and in the pass's report).

    The local sink belongs to `penguin up`; a command run in another shell reaches it only with
    the same PENGUIN_SMTP_SINK_PORT. Any other server is the sender account's own.
    """
    if server == run.sink:
        return (
            f"that is the local SMTP sink: check that `penguin up` is running and that "
            f"PENGUIN_SMTP_SINK_PORT ({server.port} here) is the port it listens on"
        )
    return (
        f"check sender {item.sender.email}'s SMTP host and port "
        f"(`{penguin_command('sender list', tenant)}`) and "
        "that the server accepts connections"
    )


def _settle_unsent(
    run: _Run, tenant_id: uuid.UUID, item: _Work, now: datetime, reason: str
) -> None:
    """A sender that cannot be used (its configuration): retried with the reason, nothing sent,
    no login attempted."""
    tally = SendReport()
    with tenant_transaction(run.app, tenant_id) as conn:
        conn.execute(store.LOCK_ENROLLMENT, {"id": item.row.enrollment_id})
        _record(conn, run, tally, item, Delivery(Outcome.RETRY, reason), now, marked=False)
    with run.lock:
        run.report.add(tally)


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
    Outcome.UNKNOWN: _Settlement("unknown", "advance", "unknown"),
    Outcome.RETRY: _Settlement("queued", "reschedule", "retrying"),
    Outcome.SERVER_DOWN: _Settlement("queued", "reschedule", "retrying"),
}
_GIVE_UP = _Settlement("failed", "exit", "failed", "send failed", True)


def _record(
    conn: Connection,
    run: _Run,
    report: SendReport,
    item: _Work,
    delivery: Delivery,
    now: datetime,
    *,
    marked: bool,
) -> None:
    """Settle one message and move its enrollment; the enrollment row is locked already.
    Counts go to `report`, a tally the caller adds to the run's once committed."""
    row, worker = item.row, run.worker
    error = f"{delivery.code or ''} {delivery.response}".strip()
    settlement = _SETTLEMENTS[delivery.outcome]
    down = delivery.outcome is Outcome.SERVER_DOWN
    values: dict[str, object] = {"error": error}
    if delivery.outcome is Outcome.RETRY and item.attempt >= run.config.max_attempts:
        settlement = _GIVE_UP
        values = {"error": f"gave up after {item.attempt} attempts: {error}"}
    elif down:
        values["next_attempt_at"] = now + rules.SERVER_DOWN_DELAY
    elif delivery.outcome is Outcome.RETRY:
        values["next_attempt_at"] = now + rules.backoff(item.attempt, item.message_id)
    elif delivery.outcome is Outcome.SENT:
        values = {"response": delivery.response, "sent_at": now}

    if marked:
        # False: our lease ran out and another worker settled this message meanwhile.
        if not store.record(
            conn, item.message_row_id, settlement.status, now, refund=down, **values
        ):
            return
    elif settlement.status == "failed":
        conn.execute(
            store.FAIL_UNSENT, {"id": item.message_row_id, "error": values["error"], "now": now}
        )
    else:
        # Never tried. Its sender cannot be used: the attempt counts, so a sender that stays
        # broken fails its messages in the end instead of holding them for ever. Its server is
        # down: it does not (an outage of any length fails nothing).
        conn.execute(
            store.NOTE_UNSENT,
            {
                "id": item.message_row_id,
                "error": values["error"],
                "next_attempt_at": values.get("next_attempt_at"),
                "attempts": 0 if down else 1,
                "now": now,
            },
        )

    if settlement.enrollment == "advance":
        sent_at = now if delivery.outcome is Outcome.SENT else None
        store.advance(conn, row.enrollment_id, row.step_id, now, worker, sent_at=sent_at)
    elif settlement.enrollment == "reschedule":
        reason = rules.SERVER_DOWN if down else rules.RETRY
        store.reschedule(conn, row.enrollment_id, values["next_attempt_at"], now, worker, reason)
        if down:
            report.deferred[rules.SERVER_DOWN] += 1
            report.servers_down[delivery.response] += 1
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
        report.exited[settlement.exit_reason] += 1
    if not down:
        setattr(report, settlement.counter, getattr(report, settlement.counter) + 1)
    if settlement.reported:
        report.errors.append(f"{row.email}: {error}")


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
    return False


def _describe(exc: BaseException) -> str:
    cause = exc.orig if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None else exc
    first_line = (str(cause).strip().splitlines() or [""])[0]
    return f"{cause.__class__.__name__}: {first_line}"


def _one_line(text: str) -> str:
    """Header values cannot hold line breaks (a template's or a CSV cell's)."""
    return " ".join(text.split())
