"""The tracking server's events, written in batches.

Requests hand their event to `EventWriter.add` and go on; one task collects what arrives
within `Config.max_delay` (up to `Config.max_batch` events) and writes it in one transaction
per tenant, on a thread of its own. What must hold:

* **Once, on the right message.** An event is inserted only if its message exists in the
  token's tenant (the insert reads the message under that tenant's row-level security), with
  the message's enrollment, contact, campaign and step; a replayed request has the same dedup
  key and inserts nothing.
* **Never lost on shutdown.** `close` stops taking events and writes everything still queued.
  A batch the database refused for a reason that may pass (the server restarting) is retried
  with backoff; while it is, requests wait for room in a bounded queue instead of piling up.
  A batch refused for its data is written again one event at a time, so one bad event is
  dropped (and logged) alone.
* **An unsubscribe is done when its request answers**: the request waits for its batch's
  commit (`add(..., wait=seconds)`), which also suppresses the address in the tenant and marks
  the contact unsubscribed. The engine sends nothing to a suppressed address (the mark before
  each conversation checks) and its next pass ends the contact's enrollments.
* Machine events are flagged by `engine.tracking.machine`'s rules: the request's own (HEAD,
  user agent) here, the timing rules in the insert.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from engine.db import is_transient, tenant_transaction
from engine.text import first_line
from engine.tracking import machine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Config:
    #: Most events in one batch, and the longest an event waits for its batch to fill.
    max_batch: int = 1000
    max_delay: float = 0.05
    #: Events queued at most; a request waits for room beyond it (the database is behind).
    max_queued: int = 100_000
    #: Backoff between attempts at a batch the database refused for a passing reason.
    retry_initial: float = 0.5
    retry_max: float = 30.0
    #: Longest a request waits for room in a full queue (then its event is dropped, counted),
    #: and the longest `close` writes what is left (penguin up's children get 20 s).
    put_timeout: float = 5.0
    close_timeout: float = 15.0

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_queued < self.max_batch:
            raise ValueError("max_batch must be at least 1 and max_queued at least max_batch")
        if self.max_delay < 0 or self.retry_initial <= 0 or self.retry_max < self.retry_initial:
            raise ValueError("delays must be positive, retry_max at least retry_initial")


@dataclass
class Event:
    event_type: str  # open | click | unsubscribe
    tenant_id: uuid.UUID
    message_id: uuid.UUID
    occurred_at: datetime
    dedup_key: str
    payload: dict = field(default_factory=dict)
    #: Why a machine made it, from the request alone (`machine.machine_reason`).
    machine_reason: str | None = None


# The events of one tenant whose message exists in it, with the message's keys; an open sooner
# after the send than a person could read is a machine's. Replays conflict on the dedup key.
_INSERT = sa.text(
    """
    with incoming as (
        select * from json_to_recordset(cast(:events as json)) as x(
            event_type text, message_id uuid, occurred_at timestamptz, payload jsonb,
            dedup_key text, machine_reason text, arrival int)
    )
    insert into app.email_events
        (tenant_id, event_type, sent_email_id, contact_id, campaign_id, step_id, occurred_at,
         payload, dedup_key, machine_reason)
    select m.tenant_id, x.event_type, m.id, m.contact_id, m.campaign_id, m.step_id,
           x.occurred_at, x.payload, x.dedup_key,
           coalesce(x.machine_reason,
                    case when x.event_type = 'open' and m.sent_at is not null
                              and x.occurred_at < m.sent_at + cast(:too_soon as interval)
                         then 'open within seconds of sending' end)
    from incoming x
    join app.sent_emails m on m.tenant_id = app.current_tenant_id() and m.id = x.message_id
    order by x.arrival
    on conflict (tenant_id, dedup_key) do nothing
    returning event_type, sent_email_id, contact_id, machine_reason
    """
)


def _as_json(events: list[Event]) -> str:
    """The events as the one JSON parameter of `_INSERT` (one value to adapt, not six arrays
    of a thousand)."""
    return json.dumps(
        [
            {
                "event_type": e.event_type,
                "message_id": str(e.message_id),
                "occurred_at": e.occurred_at.isoformat(),
                "payload": e.payload,
                "dedup_key": e.dedup_key,
                "machine_reason": e.machine_reason,
                "arrival": i,
            }
            for i, e in enumerate(events)
        ]
    )


# Clicks on every link of a message's part (two or more links), all within the window that ends
# at its latest click: a scanner's. Each click carries its part, its link's number and the
# part's number of links; a person's earlier click does not hide a scanner's later burst.
_FLAG_ALL_LINKS = sa.text(
    """
    with latest as (
        select c.sent_email_id, c.payload ->> 'part' as part, max(c.occurred_at) as last_at,
               max((c.payload ->> 'links')::int) as links
        from app.email_events c
        where c.tenant_id = app.current_tenant_id() and c.sent_email_id = any(:message_ids)
          and c.event_type = 'click' and c.machine_reason is null
        group by 1, 2
    ), scanned as (
        select l.sent_email_id, l.part, l.last_at
        from latest l
        join app.email_events c
          on c.tenant_id = app.current_tenant_id() and c.sent_email_id = l.sent_email_id
         and c.event_type = 'click' and c.machine_reason is null
         and (c.payload ->> 'part') is not distinct from l.part
         and c.occurred_at >= l.last_at - cast(:window as interval)
        where l.links >= 2
        group by l.sent_email_id, l.part, l.last_at, l.links
        having count(distinct c.payload ->> 'link') >= l.links
    )
    update app.email_events e
    set machine_reason = 'clicks on every link within seconds'
    from scanned s
    where e.tenant_id = app.current_tenant_id() and e.sent_email_id = s.sent_email_id
      and e.event_type = 'click' and e.machine_reason is null
      and (e.payload ->> 'part') is not distinct from s.part
      and e.occurred_at >= s.last_at - cast(:window as interval)
    """
)

# An unsubscribe suppresses the message's address in the tenant and marks its contact.
_UNSUBSCRIBE = sa.text(
    """
    with gone as (
        select m.recipient_email, m.contact_id, m.message_id
        from app.sent_emails m
        where m.tenant_id = app.current_tenant_id() and m.id = any(:message_ids)
    ), suppressed as (
        insert into app.suppressions (tenant_id, email, reason, detail, created_at)
        select distinct on (lower(g.recipient_email))
               app.current_tenant_id(), g.recipient_email, 'unsubscribe',
               'unsubscribe link of <' || g.message_id || '>', cast(:now as timestamptz)
        from gone g
        on conflict (tenant_id, lower(email)) do nothing
    )
    update app.contacts ct
    set status = 'unsubscribed', updated_at = cast(:now as timestamptz)
    from gone g
    where ct.id = g.contact_id and ct.status = 'active'
    """
)


def write(app: Engine, events: list[Event]) -> int:
    """Write `events` now, one transaction per tenant; how many were new. Used by the writer's
    task and by anything that has events in hand."""
    by_tenant: dict[uuid.UUID, list[Event]] = defaultdict(list)
    for event in events:
        by_tenant[event.tenant_id].append(event)
    written = 0
    for tenant_id, batch in by_tenant.items():
        with tenant_transaction(app, tenant_id) as conn:
            rows = conn.execute(
                _INSERT,
                {"events": _as_json(batch), "too_soon": machine.OPEN_TOO_SOON},
            ).all()
            written += len(rows)
            clicked = list({r.sent_email_id for r in rows if r.event_type == "click"})
            if clicked:
                conn.execute(
                    _FLAG_ALL_LINKS,
                    {"message_ids": clicked, "window": machine.ALL_LINKS_WINDOW},
                )
            # Every unsubscribe request applies, a replay too: harmless, and it repairs a
            # suppression someone removed by hand only if the person asks again.
            gone = list({e.message_id for e in batch if e.event_type == "unsubscribe"})
            if gone:
                now = max(e.occurred_at for e in batch if e.event_type == "unsubscribe")
                conn.execute(_UNSUBSCRIBE, {"message_ids": gone, "now": now})
    return written


class WriterUnavailable(RuntimeError):
    """The writer cannot take the event: it is closed or it stopped on an unexpected error."""


class EventWriter:
    """Collects events on the server's event loop and writes them in batches (module docstring).
    `start` on the loop before the first `add`; `close` when the server stops.

    Nothing waits for ever: a request gives up on room in the queue after `Config.put_timeout`
    (its event is dropped, and counted), an unsubscribe on its commit after `wait` seconds (its
    event stays queued), and `close` on the last batches after `Config.close_timeout` (what is
    left is counted as dropped, and said). `failing` says since when the database has refused
    batches for a passing reason, or that the writer stopped; /health reports it."""

    def __init__(self, app: Engine, config: Config | None = None) -> None:
        self.app = app
        self.config = config or Config()
        self.written = 0
        self.dropped = 0
        #: Since when (event loop time) batches have been retried, None while they go through.
        self.failing_since: float | None = None
        #: Why the writer stopped, if an unexpected error stopped it.
        self.stopped: BaseException | None = None
        self._queue: asyncio.Queue[tuple[Event, asyncio.Future[None] | None]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._stop_queued = False
        #: The batch being collected or written.
        self._batch: list[tuple[Event, asyncio.Future[None] | None]] = []

    async def start(self) -> None:
        self._queue = asyncio.Queue(self.config.max_queued)
        self._task = asyncio.create_task(self._supervised(), name="penguin-event-writer")

    @property
    def queued(self) -> int:
        """Events waiting for a batch."""
        return 0 if self._queue is None else self._queue.qsize() - self._stop_queued

    @property
    def pending(self) -> int:
        """Events not written yet: queued, or in the batch being written."""
        return self.queued + len(self._batch)

    @property
    def healthy(self) -> bool:
        return self.stopped is None and self.failing_since is None

    async def add(self, event: Event, *, wait: float | None = None) -> None:
        """Queue `event`; with `wait`, return once it is committed, raising TimeoutError after
        `wait` seconds (the event stays queued) or the database's error if it refused it."""
        if self._queue is None or self._closing or self.stopped is not None:
            raise WriterUnavailable("the event writer is not running")
        future = asyncio.get_running_loop().create_future() if wait is not None else None
        try:
            self._queue.put_nowait((event, future))  # the common case: no task, no timer
        except asyncio.QueueFull:
            await self._put_waiting((event, future))
        if future is not None:
            await asyncio.wait_for(asyncio.shield(future), wait)

    async def _put_waiting(self, item: tuple[Event, asyncio.Future[None] | None]) -> None:
        assert self._queue is not None
        try:
            await asyncio.wait_for(self._queue.put(item), self.config.put_timeout)
        except TimeoutError:
            self.dropped += 1
            log.error("event dropped: the queue stayed full for %.0f s", self.config.put_timeout)
            raise

    async def close(self) -> None:
        """Take no more events, write the queued ones (for at most `Config.close_timeout`), stop."""
        self._closing = True
        if self._queue is None or self._task is None or self._task.done():
            return
        # A full queue takes no stop mark: the writer stops when it has drained it.
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(_STOP)  # type: ignore[arg-type]
            self._stop_queued = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), self.config.close_timeout)
        except TimeoutError:
            lost = self.pending
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self.dropped += lost
            log.error(
                "the event writer stopped with %d events not written: the database did not "
                "take them within %.0f s",
                lost,
                self.config.close_timeout,
            )

    async def _supervised(self) -> None:
        try:
            await self._run()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a bug: say so, and fail whoever waits
            self.stopped = exc
            log.exception("the event writer stopped")
            waiting = [f for _, f in self._batch if f is not None]
            while self._queue is not None and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is not _STOP and item[1] is not None:
                    waiting.append(item[1])
            for future in waiting:
                if not future.done():
                    future.set_exception(WriterUnavailable("the event writer stopped"))

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            if self._closing and self._queue.empty():
                break
            first = await self._queue.get()
            if first is _STOP:
                self._stop_queued = False
                break
            batch = self._batch = [first]
            deadline = loop.time() + self.config.max_delay
            while len(batch) < self.config.max_batch:
                try:
                    item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    timeout = deadline - loop.time()
                    if timeout <= 0 or self._closing:
                        break
                    try:
                        item = await asyncio.wait_for(self._queue.get(), timeout)
                    except TimeoutError:
                        break
                if item is _STOP:
                    self._stop_queued = False
                    stopping = True
                    break
                batch.append(item)
            await self._write(batch)
            self._batch = []  # (kept on an error: `_supervised` fails whoever waits on it)

    async def _write(self, batch: list[tuple[Event, asyncio.Future[None] | None]]) -> None:
        loop = asyncio.get_running_loop()
        events = [event for event, _ in batch]
        delay = self.config.retry_initial
        while True:
            try:
                self.written += await asyncio.to_thread(write, self.app, events)
                failed: dict[int, BaseException] = {}
                break
            except Exception as exc:
                if is_transient(exc):
                    if self.failing_since is None:
                        self.failing_since = loop.time()
                    log.warning(
                        "events not written yet (retrying in %.1f s): %s", delay, first_line(exc)
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.config.retry_max)
                    continue
                failed = await self._one_by_one(events)
                break
        self.failing_since = None
        for i, (_, future) in enumerate(batch):
            if future is not None and not future.done():
                if i in failed:
                    future.set_exception(failed[i])
                else:
                    future.set_result(None)

    async def _one_by_one(self, events: list[Event]) -> dict[int, BaseException]:
        """Each event of a refused batch alone: the bad ones are dropped, and said."""
        failed: dict[int, BaseException] = {}
        for i, event in enumerate(events):
            delay = self.config.retry_initial
            while True:
                try:
                    self.written += await asyncio.to_thread(write, self.app, [event])
                    break
                except Exception as exc:
                    if is_transient(exc):
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, self.config.retry_max)
                        continue
                    self.dropped += 1
                    failed[i] = exc
                    log.error(
                        "event dropped: %s of message %s (tenant %s): %s",
                        event.event_type,
                        event.message_id,
                        event.tenant_id,
                        first_line(exc),
                    )
                    break
        return failed


_STOP = object()

__all__ = ["Config", "Event", "EventWriter", "WriterUnavailable", "write"]
