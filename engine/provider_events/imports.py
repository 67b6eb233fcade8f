"""One provider's events file imported as one batch, like a contact upload.

* The batch is registered (`pending`) and marked `processing` in transactions of their own;
  then the file is read and parsed record by record, staged in a temporary table, and
  everything is written in one transaction: the events, their effects, the rejects and the
  completed batch. A file that cannot be read at all, or a crash, leaves the batch `failed`
  (or `processing`) and nothing of the file written; importing it again resumes that batch.
  Content already imported for this provider is not imported twice (unless forced), even when
  two imports of it start at once (registration takes turns per content).
* **Matched** by our Message-ID, else by the provider's own message id through
  `provider_messages` (learnt from this file's records and earlier imports'): only messages
  of the importing tenant are ever seen (row-level security). A record matching no message is
  rejected, saying which id it named.
* **Once.** An event's dedup key is the provider and its event id (or its record's digest), so
  a record exported in two files, or twice in one, is one event: the later ones count as
  duplicates.
* **Effects** are those of the same events arriving by mail or the tracking server: a hard
  bounce (or an address's third soft bounce within 7 days), a complaint or an unsubscribe
  suppresses the message's recipient in the tenant and marks its contact; a hard bounce marks
  its message `bounced`. A bounce or complaint that names failed recipients suppresses ours
  only if it is among them. Opens sooner than `machine.OPEN_TOO_SOON` after sending are a
  machine's, as for our own pixel.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from engine.db import tenant_transaction
from engine.ingest.rejects import KEPT_REJECTS
from engine.mailboxes.inbound import SOFT_BOUNCE_WINDOW, SoftBounces
from engine.provider_events import formats, records
from engine.provider_events.formats import FORMATS, RecordError
from engine.text import first_line, id_prefix, readable_name, shown
from engine.tracking import machine
from engine.userfiles import UserFileError, open_input

SOURCES = ("cli", "inbox")
#: Records staged in one statement.
STAGE_ROWS = 2_000
#: progress(stage, done, total): "reading" (bytes of the file), then "writing" (no counts).
Progress = Callable[[str, int, int | None], None]


class EventImportError(ValueError):
    """A file that cannot be imported at all; the message names it and says why."""


@dataclass(frozen=True)
class ImportResult:
    import_id: uuid.UUID
    provider: str
    file_name: str
    total: int
    imported: int
    duplicates: int
    skipped: int
    rejected: int
    unmatched: int
    suppressed: int
    event_counts: dict[str, int]
    #: True when this content was imported before and nothing was done now.
    already_imported: bool = False

    @classmethod
    def from_row(cls, row: sa.Row, *, already_imported: bool = False) -> ImportResult:
        return cls(
            import_id=row.id,
            provider=row.provider,
            file_name=row.file_name,
            total=row.total_records,
            imported=row.imported_count,
            duplicates=row.duplicate_count,
            skipped=row.skipped_count,
            rejected=row.rejected_count,
            unmatched=row.unmatched_count,
            suppressed=row.suppressed_count,
            event_counts=dict(row.event_counts),
            already_imported=already_imported,
        )

    def counts(self) -> dict[str, int]:
        return {
            "total": self.total,
            "imported": self.imported,
            "duplicates": self.duplicates,
            "skipped": self.skipped,
            "rejected": self.rejected,
            "unmatched": self.unmatched,
            "suppressed": self.suppressed,
        }


_BATCH_COLUMNS = """
    id, provider, file_name, status, total_records, imported_count, duplicate_count,
    skipped_count, rejected_count, unmatched_count, suppressed_count, event_counts, error,
    source, created_at, finished_at
"""
_LOCK = sa.text(
    "select pg_advisory_xact_lock(hashtextextended("
    "'event-import:' || app.current_tenant_id() || ':' || :provider || ':' || :sha, 0))"
)
_FIND = sa.text(
    f"""
    select {_BATCH_COLUMNS} from app.event_imports
    where tenant_id = app.current_tenant_id() and provider = :provider and file_sha256 = :sha
      and status = any(:statuses)
    order by created_at desc limit 1
    """
)
_REGISTER = sa.text(
    """
    insert into app.event_imports
        (tenant_id, provider, file_name, file_sha256, file_size, source, created_at)
    values (app.current_tenant_id(), :provider, :file_name, :sha, :size, :source, :now)
    returning id
    """
)
_START = sa.text(
    """
    update app.event_imports set status = 'processing', started_at = :now, error = null
    where tenant_id = app.current_tenant_id() and id = :id
    """
)
_FAIL = sa.text(
    """
    update app.event_imports set status = 'failed', error = :error, finished_at = :now
    where tenant_id = app.current_tenant_id() and id = :id
    """
)
_LOCK_BATCH = sa.text(
    "select status from app.event_imports "
    "where tenant_id = app.current_tenant_id() and id = :id for update"
)
_ROW = sa.text(
    f"select {_BATCH_COLUMNS} from app.event_imports "
    "where tenant_id = app.current_tenant_id() and id = :id"
)
_RECENT = sa.text(
    f"""
    select {_BATCH_COLUMNS} from app.event_imports
    where tenant_id = app.current_tenant_id() order by created_at desc limit :limit
    """
)
_BY_PREFIX = sa.text(
    f"""
    select {_BATCH_COLUMNS} from app.event_imports
    where tenant_id = app.current_tenant_id() and replace(id::text, '-', '') like :prefix || '%'
    order by created_at desc limit :limit
    """
)
_REJECTS = sa.text(
    """
    select line_number, reason, raw_record as raw_row from app.event_import_rejects
    where tenant_id = app.current_tenant_id() and import_id = :id order by record
    """
)

_STAGE_TABLES = """
create temporary table staged (
    record          integer primary key,
    line_number     integer not null,
    kind            text not null,
    occurred_at     timestamptz not null,
    message_id      text,
    provider_id     text,
    event_key       text not null,
    recipients      text[] not null,
    hard            boolean not null,
    machine_reason  text,
    payload         jsonb not null,
    raw             text not null,
    sent_email_id   uuid,
    first_of_key    boolean not null default false,
    imported        boolean not null default false
) on commit drop;
create temporary table unreadable (
    record integer primary key, line_number integer not null, reason text not null,
    raw text not null
) on commit drop;
"""
_STAGE = sa.text(
    """
    insert into pg_temp.staged
        (record, line_number, kind, occurred_at, message_id, provider_id, event_key,
         recipients, hard, machine_reason, payload, raw)
    select * from json_to_recordset(cast(:rows as json)) as x(
        record integer, line_number integer, kind text, occurred_at timestamptz,
        message_id text, provider_id text, event_key text, recipients text[], hard boolean,
        machine_reason text, payload jsonb, raw text)
    """
)
_STAGE_UNREADABLE = sa.text(
    """
    insert into pg_temp.unreadable (record, line_number, reason, raw)
    select * from json_to_recordset(cast(:rows as json))
        as x(record integer, line_number integer, reason text, raw text)
    """
)
# By our Message-ID (the tenant's messages only: row-level security), then by the provider's
# id as earlier imports learnt it, then as this file teaches it; what is learnt is kept.
_MATCH = [
    sa.text(
        """
        update pg_temp.staged s set sent_email_id = m.id
        from app.sent_emails m
        where m.tenant_id = app.current_tenant_id() and m.message_id = s.message_id
        """
    ),
    sa.text(
        """
        update pg_temp.staged s set sent_email_id = p.sent_email_id
        from app.provider_messages p
        where s.sent_email_id is null and p.tenant_id = app.current_tenant_id()
          and p.provider = :provider and p.provider_message_id = s.provider_id
        """
    ),
    sa.text(
        """
        update pg_temp.staged s set sent_email_id = k.sent_email_id
        from (select distinct on (provider_id) provider_id, sent_email_id from pg_temp.staged
              where sent_email_id is not null and provider_id is not null
              order by provider_id, record) k
        where s.sent_email_id is null and s.provider_id = k.provider_id
        """
    ),
    sa.text(
        """
        insert into app.provider_messages (tenant_id, provider, provider_message_id, sent_email_id)
        select distinct on (provider_id) app.current_tenant_id(), :provider, provider_id,
               sent_email_id
        from pg_temp.staged where sent_email_id is not null and provider_id is not null
        order by provider_id, record
        on conflict do nothing
        """
    ),
    # One event per key: the first record of a key is the one written.
    sa.text(
        """
        update pg_temp.staged s set first_of_key = true
        from (select distinct on (event_key) record from pg_temp.staged
              where sent_email_id is not null order by event_key, record) f
        where s.record = f.record
        """
    ),
]
# This file's soft bounces, which the addresses' earlier ones may turn hard.
_SOFT_BOUNCES = sa.text(
    """
    select s.record, s.sent_email_id, m.recipient_key as address, s.occurred_at
    from pg_temp.staged s
    join app.sent_emails m on m.tenant_id = app.current_tenant_id() and m.id = s.sent_email_id
    where s.first_of_key and s.kind = 'bounce' and not s.hard
    """
)
_HARDEN = sa.text("update pg_temp.staged set hard = true where record = any(:records)")
_INSERT_EVENTS = sa.text(
    """
    with inserted as (
        insert into app.email_events
            (tenant_id, event_type, sent_email_id, contact_id, campaign_id, step_id,
             occurred_at, payload, dedup_key, machine_reason)
        select m.tenant_id, s.kind, m.id, m.contact_id, m.campaign_id, m.step_id, s.occurred_at,
               s.payload || jsonb_build_object('provider', cast(:provider as text),
                                               'import', cast(:import_id as text))
                 || case when s.kind = 'bounce'
                         then jsonb_build_object('hard', s.hard, 'addresses', s.recipients)
                         else '{}' end,
               :provider || ':' || s.event_key,
               coalesce(s.machine_reason,
                        case when s.kind = 'open' and m.sent_at is not null
                                  and s.occurred_at < m.sent_at + cast(:too_soon as interval)
                             then 'open within seconds of sending' end)
        from pg_temp.staged s
        join app.sent_emails m on m.tenant_id = app.current_tenant_id() and m.id = s.sent_email_id
        where s.first_of_key
        order by s.record
        on conflict (tenant_id, dedup_key) do nothing
        returning dedup_key
    )
    update pg_temp.staged s set imported = true
    from inserted i
    where s.first_of_key and i.dedup_key = :provider || ':' || s.event_key
    """
)
# A suppressing event's effects, the earliest per address: the address suppressed, its
# contact marked, a hard bounce's message marked.
_EFFECTS = sa.text(
    """
    with effects as (
        select distinct on (m.recipient_key)
               m.recipient_email, m.contact_id, s.kind, s.occurred_at,
               case s.kind when 'bounce' then 'bounced' when 'complaint' then 'complained'
                           else 'unsubscribed' end as status,
               :provider || ' ' || s.kind
                 || coalesce(': ' || nullif(s.payload ->> 'detail', ''), '') as detail
        from pg_temp.staged s
        join app.sent_emails m on m.tenant_id = app.current_tenant_id() and m.id = s.sent_email_id
        where s.imported
          and (s.kind in ('complaint', 'unsubscribe') or (s.kind = 'bounce' and s.hard))
          and (s.kind = 'unsubscribe' or cardinality(s.recipients) = 0
               or m.recipient_key = any(s.recipients))
        order by m.recipient_key, s.occurred_at, s.record
    ), suppressed as (
        insert into app.suppressions (tenant_id, email, reason, detail, created_at)
        select app.current_tenant_id(), recipient_email, kind, detail, occurred_at from effects
        on conflict (tenant_id, lower(email)) do nothing
        returning 1
    ), marked as (
        update app.contacts c set status = e.status, updated_at = cast(:now as timestamptz)
        from effects e
        where c.tenant_id = app.current_tenant_id() and c.id = e.contact_id
          and c.status = 'active'
    ), bounced as (
        update app.sent_emails m
        set status = 'bounced',
            last_error = left(:provider || ' bounce'
                              || coalesce(': ' || nullif(s.payload ->> 'detail', ''), ''), 1000),
            updated_at = cast(:now as timestamptz)
        from pg_temp.staged s
        where s.imported and s.kind = 'bounce' and s.hard
          and m.tenant_id = app.current_tenant_id() and m.id = s.sent_email_id
          and m.status = 'sent'
          and (cardinality(s.recipients) = 0 or m.recipient_key = any(s.recipients))
    )
    select count(*) from suppressed
    """
)
# The first `KEPT_REJECTS` by their place in the file.
_SAVE_REJECTS = sa.text(
    """
    insert into app.event_import_rejects
        (tenant_id, import_id, record, line_number, reason, raw_record)
    select app.current_tenant_id(), :id, record, line_number, reason, raw
    from (
        select record, line_number, reason, raw
        from pg_temp.unreadable
        union all
        select record, line_number,
               case when message_id is not null
                    then 'no message of this tenant has Message-ID <' || left(message_id, 200)
                         || '>' || coalesce(' (nor is ' || :provider || ' message '
                                            || left(provider_id, 200) || ' known)', '')
                    else 'no message of this tenant is known as ' || :provider || ' message '
                         || left(provider_id, 200)
                         || ' (no record of it carried its Message-ID)' end,
               raw
        from pg_temp.staged where sent_email_id is null
    ) r
    order by record limit :keep
    """
)
_TALLY = sa.text(
    """
    select count(*) filter (where sent_email_id is not null) as matched,
           count(*) filter (where sent_email_id is null) as unmatched,
           count(*) filter (where imported) as imported,
           (select count(*) from pg_temp.unreadable) as unreadable
    from pg_temp.staged
    """
)
_KIND_COUNTS = sa.text(
    "select kind, count(*) from pg_temp.staged where imported group by kind order by kind"
)
_COMPLETE = sa.text(
    f"""
    update app.event_imports
    set status = 'completed', finished_at = :now, error = null,
        total_records = :total, imported_count = :imported, duplicate_count = :duplicates,
        skipped_count = :skipped, rejected_count = :rejected, unmatched_count = :unmatched,
        suppressed_count = :suppressed, event_counts = cast(:event_counts as jsonb)
    where tenant_id = app.current_tenant_id() and id = :id
    returning {_BATCH_COLUMNS}
    """
)


def import_events(
    app: Engine,
    tenant_id: uuid.UUID,
    path: Path,
    provider: str,
    now: datetime,
    *,
    source: str = "cli",
    file_name: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> ImportResult:
    """Import `path`, an events export of `provider` (one of `FORMATS`), into the tenant.

    Raises `EventImportError` (after recording the batch as failed, once it is registered)
    when the file cannot be used. Unless `force`, content already imported returns that
    batch's result.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}")
    file_name = readable_name(file_name or path.name)
    label = shown(file_name)
    if provider not in FORMATS:
        raise EventImportError(
            f"{label}: unknown format {shown(provider)!r}; one of {', '.join(FORMATS)}"
        )
    try:
        # An inbox's entry was checked to be no link; one put in its place since is refused.
        handle = open_input(path, label=label, follow_links=source != "inbox")
    except UserFileError as exc:
        raise EventImportError(str(exc)) from None
    with handle:  # the file checked is the file read, whatever the path names meanwhile
        return _register_and_import(
            app, tenant_id, handle, label, file_name, provider, now, source, force, progress
        )


def _register_and_import(
    app: Engine,
    tenant_id: uuid.UUID,
    handle: BinaryIO,
    label: str,
    file_name: str,
    provider: str,
    now: datetime,
    source: str,
    force: bool,
    progress: Progress | None,
) -> ImportResult:
    """`import_events` of the open file `handle`."""
    sha, size = _digest(handle, label)
    params = {"provider": provider, "sha": sha}
    with tenant_transaction(app, tenant_id) as conn:
        conn.execute(_LOCK, params)  # concurrent imports of this content take turns
        if not force and (
            done := conn.execute(_FIND, params | {"statuses": ["completed"]}).first()
        ):
            return ImportResult.from_row(done, already_imported=True)
        unfinished = (
            None
            if force
            else conn.execute(
                _FIND, params | {"statuses": ["pending", "processing", "failed"]}
            ).first()
        )
        import_id = (
            unfinished.id
            if unfinished
            else conn.execute(
                _REGISTER,
                params | {"file_name": file_name, "size": size, "source": source, "now": now},
            ).scalar_one()
        )
    with tenant_transaction(app, tenant_id) as conn:
        conn.execute(_START, {"id": import_id, "now": now})
    try:
        return _import(app, tenant_id, import_id, handle, provider, size, now, progress)
    except Exception as exc:
        error = exc if isinstance(exc, EventImportError) else _as_error(exc, label)
        with tenant_transaction(app, tenant_id) as conn:
            conn.execute(_FAIL, {"id": import_id, "error": str(error), "now": now})
        if error is exc:
            raise
        raise error from exc


def _digest(handle: BinaryIO, label: str) -> tuple[str, int]:
    """The sha256 and size of the open regular file `handle`, once it is known to be within
    the cap of its layout (`records.MAX_FILE_BYTES`): nothing is read past its first line
    before that."""
    try:
        size = os.fstat(handle.fileno()).st_size
        try:
            problem = records.oversize(records.layout_of(handle), size, label)
        except records.FileError:  # empty: the import records that as its failure
            problem = None
        if problem is not None:
            raise EventImportError(problem)
        handle.seek(0)
        digest = hashlib.file_digest(handle, "sha256")
        size = handle.tell()
    except OSError as exc:
        raise EventImportError(f"{label}: cannot be read ({exc.strerror or exc})") from None
    return digest.hexdigest(), size


def _as_error(exc: Exception, label: str) -> EventImportError:
    if isinstance(exc, records.FileError):
        return EventImportError(f"{label}: {exc}")
    detail = shown(first_line(exc), 200)
    if isinstance(exc, OSError):
        return EventImportError(f"{label}: the file cannot be read ({detail})")
    return EventImportError(
        f"{label}: the import failed unexpectedly ({type(exc).__name__}: {detail}); "
        "nothing of it was saved, and importing it again retries it"
    )


def _import(
    app: Engine,
    tenant_id: uuid.UUID,
    import_id: uuid.UUID,
    handle: BinaryIO,
    provider: str,
    size: int,
    now: datetime,
    progress: Progress | None,
) -> ImportResult:
    report = progress or (lambda stage, done, total: None)
    with tenant_transaction(app, tenant_id) as conn:
        if conn.execute(_LOCK_BATCH, {"id": import_id}).scalar_one() == "completed":
            return ImportResult.from_row(  # a concurrent retry finished it
                conn.execute(_ROW, {"id": import_id}).one(), already_imported=True
            )
        conn.exec_driver_sql(_STAGE_TABLES)
        total, skipped, not_staged = _stage(
            conn, handle, provider, lambda done: report("reading", done, size)
        )
        report("writing", 0, None)
        conn.exec_driver_sql("analyze pg_temp.staged")  # plan the joins on its real size
        for statement in _MATCH:
            conn.execute(statement, {"provider": provider})
        _harden_repeated_soft_bounces(conn)
        conn.execute(
            _INSERT_EVENTS,
            {"provider": provider, "import_id": str(import_id), "too_soon": machine.OPEN_TOO_SOON},
        )
        suppressed = conn.execute(_EFFECTS, {"provider": provider, "now": now}).scalar_one()
        conn.execute(_SAVE_REJECTS, {"id": import_id, "provider": provider, "keep": KEPT_REJECTS})
        tally = conn.execute(_TALLY).one()
        kinds = {kind: n for kind, n in conn.execute(_KIND_COUNTS)}
        row = conn.execute(
            _COMPLETE,
            {
                "id": import_id,
                "now": now,
                "total": total,
                "imported": tally.imported,
                "duplicates": tally.matched - tally.imported,
                "skipped": skipped,
                "rejected": tally.unreadable + not_staged + tally.unmatched,
                "unmatched": tally.unmatched,
                "suppressed": suppressed,
                "event_counts": json.dumps(kinds),
            },
        ).one()
    return ImportResult.from_row(row)


def _stage(
    conn: Connection, handle: BinaryIO, provider: str, progress: Callable[[int], None]
) -> tuple[int, int, int]:
    """Parse every record of the open file `handle` into the staging tables; (records, skipped,
    unreadable records not staged). Only the first `KEPT_REJECTS` unreadable records are staged
    (no more can be kept); the others are counted."""
    events: list[dict] = []
    unreadable: list[dict] = []
    total = skipped = staged_unreadable = not_staged = 0
    for record in records.read(handle, progress):
        total += 1
        problem = record.problem
        event = None
        if problem is None:
            try:
                event = formats.parse(provider, record.value)
            except RecordError as exc:
                problem = str(exc)
            else:
                if event is None:
                    skipped += 1
                    continue
        if problem is not None:
            if staged_unreadable >= KEPT_REJECTS:
                not_staged += 1
                continue
            staged_unreadable += 1
            unreadable.append(
                {
                    "record": record.number,
                    "line_number": record.line,
                    "reason": problem,
                    "raw": record.raw,
                }
            )
        else:
            events.append(_row(record, event))
        if len(events) >= STAGE_ROWS:
            conn.execute(_STAGE, {"rows": json.dumps(events)})
            events.clear()
        if len(unreadable) >= STAGE_ROWS:
            conn.execute(_STAGE_UNREADABLE, {"rows": json.dumps(unreadable)})
            unreadable.clear()
    if events:
        conn.execute(_STAGE, {"rows": json.dumps(events)})
    if unreadable:
        conn.execute(_STAGE_UNREADABLE, {"rows": json.dumps(unreadable)})
    if total == 0:
        raise records.FileError("the file holds no records")
    return total, skipped, not_staged


def _row(record: records.Record, event: formats.ProviderEvent) -> dict:
    return {
        "record": record.number,
        "line_number": record.line,
        "kind": event.kind,
        "occurred_at": event.occurred_at.isoformat(),
        "message_id": event.message_id,
        "provider_id": event.provider_id,
        "event_key": event.event_key,
        "recipients": list(event.recipients),
        "hard": event.hard,
        "machine_reason": event.machine_reason,
        "payload": event.payload,
        "raw": record.raw,
    }


def _harden_repeated_soft_bounces(conn: Connection) -> None:
    """An address's third soft bounce (of different messages) within `SOFT_BOUNCE_WINDOW` is
    hard, counting its earlier ones and this file's, in time order (an export's events come in
    any order)."""
    soft = conn.execute(_SOFT_BOUNCES).all()
    if not soft:
        return
    history = SoftBounces(
        conn,
        {row.address for row in soft},
        min(row.occurred_at for row in soft) - SOFT_BOUNCE_WINDOW,
    )
    hardened = [
        row.record
        for row in sorted(soft, key=lambda r: (r.occurred_at, r.record))
        if history.is_hard(row.address, row.sent_email_id, row.occurred_at, upto=True)
    ]
    if hardened:
        conn.execute(_HARDEN, {"records": hardened})


def recent_imports(conn: Connection, limit: int) -> list[sa.Row]:
    return conn.execute(_RECENT, {"limit": limit}).all()


def imports_by_prefix(conn: Connection, prefix: str, limit: int = 10) -> list[sa.Row]:
    """The tenant's imports whose id starts with `prefix` (`engine.text.id_prefix`)."""
    digits = id_prefix(prefix, "import id")
    return conn.execute(_BY_PREFIX, {"prefix": digits, "limit": limit}).all()


def rejects(conn: Connection, import_id: uuid.UUID) -> list[sa.Row]:
    return conn.execute(_REJECTS, {"id": import_id}).all()
