"""PostgreSQL for uploads: the batch lifecycle, staging, and the set-based merge.

Row-level security forbids `COPY` into tenant tables for the application role, so rows are
copied into temporary tables (no WAL, no policies) and merged from there in a few
statements. Staging, merge, rejects and the batch's completion share one transaction: a
file lands whole or not at all.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from queue import Queue

import polars as pl
import sqlalchemy as sa
from psycopg.copy import QueuedLibpqWriter
from sqlalchemy.engine import Connection

from engine.ingest.clean import STAGED_COLUMNS
from engine.ingest.columns import TEXT_FIELDS
from engine.ingest.errors import IngestError
from engine.ingest.rejects import KEPT_REJECTS
from engine.text import id_prefix

MAX_LIST_NAME = 200

_UPSERT_LIST = sa.text(
    """
    insert into app.contact_lists (tenant_id, name, created_at, updated_at)
    values (app.current_tenant_id(), :name, :now, :now)
    on conflict (tenant_id, name) do update set updated_at = excluded.updated_at
    returning id
    """
)

_COMPLETED = sa.text(
    """
    select * from app.upload_batches
    where list_name = :list_name and content_sha256 = :sha and status = 'completed'
    order by finished_at desc limit 1
    """
)
# A batch that never completed (its run crashed or failed) is picked up again by a retry.
_UNFINISHED = sa.text(
    """
    select id from app.upload_batches
    where list_name = :list_name and content_sha256 = :sha
      and status in ('pending', 'processing', 'failed')
    order by created_at desc limit 1
    """
)
# Registration of one content into one list takes turns until commit: without it, two
# uploads of the same file at the same moment both find no batch and both register one.
_REGISTRATION_LOCK = sa.text(
    """
    select pg_advisory_xact_lock(
        hashtextextended('upload-batch:' || app.current_tenant_id() || ':' || :list_name
                         || ':' || :sha, 0))
    """
)
_REGISTER = sa.text(
    """
    insert into app.upload_batches
        (tenant_id, list_name, file_name, content_sha256, file_size, column_mapping, source,
         status, created_at)
    values (app.current_tenant_id(), :list_name, :file_name, :sha, :size, :mapping, :source,
            'pending', :now)
    returning id
    """
)
_START = sa.text(
    """
    update app.upload_batches
    set status = 'processing', started_at = :now, finished_at = null, error = null,
        attempts = attempts + 1
    where id = :batch_id and status <> 'completed'
    """
)
_LOCK = sa.text("select status from app.upload_batches where id = :batch_id for update")
_FAIL = sa.text(
    """
    update app.upload_batches set status = 'failed', error = :error, finished_at = :now
    where id = :batch_id and status <> 'completed'
    """
)
_COMPLETE = sa.text(
    """
    update app.upload_batches set
        status = 'completed', finished_at = :now, list_id = :list_id,
        column_mapping = :mapping, file_format = :file_format,
        total_rows = :total_rows, inserted_count = :inserted, updated_count = :updated,
        unchanged_count = :unchanged, duplicate_count = :duplicates,
        rejected_count = :rejected, suppressed_count = :suppressed,
        role_address_count = :role_addresses, list_added_count = :list_added
    where id = :batch_id
    returning *
    """
)
_BY_ID = sa.text("select * from app.upload_batches where id = :batch_id")
# `prefix` is hex digits only (see `batches_by_prefix`), so it holds no LIKE wildcard.
_BY_PREFIX = sa.text(
    """
    select id, created_at, file_name, list_name, status, rejected_count from app.upload_batches
    where replace(id::text, '-', '') like :prefix || '%'
    order by created_at desc limit :limit
    """
)
_RECENT = sa.text(
    """
    select id, created_at, file_name, list_name, source, status, total_rows, inserted_count,
           updated_count, rejected_count, error
    from app.upload_batches order by created_at desc limit :limit
    """
)
#: Hex digits of a batch id a user must give at least (as git asks for commit ids).

_STAGE = sa.text(
    """
    create temporary table staged_contacts (
        line_number integer not null, email text not null, is_role_address boolean not null,
        first_name text, last_name text, full_name text, company text, job_title text,
        phone text, website text, city text, country text, timezone text, lead_score integer,
        attributes jsonb not null, raw_data jsonb not null
    ) on commit drop;
    create temporary table staged_rejects (
        line_number integer not null, raw_row text not null, reason text not null
    ) on commit drop;
    """
)

_FIELDS = (*TEXT_FIELDS, "lead_score")


def _last_value(column: str) -> str:
    return (
        f"(array_agg({column} order by line_number desc) "
        f"filter (where {column} is not null))[1] as {column}"
    )


# One row per address (as PostgreSQL compares them: the unique index is on lower(email)).
# An address on several lines merges as if the lines were applied in order: each field and
# each attribute takes its last non-empty value, while the address keeps the spelling of its
# first line (as an existing contact keeps its own: `_UPDATE` never rewrites `email`), so a
# later `ANNA@Example.com` changes nobody's address. Only repeated addresses pay for that.
# Each address is matched with the tenant's contact, if there is one, and whether the file
# changes it: existing contacts keep their status (a suppressed address stays suppressed)
# and any field the file leaves empty.
_DEDUPLICATE = sa.text(
    f"""
    create temporary table deduped on commit drop as
    with keyed as (
        select lower(email) as key, * from staged_contacts
    ), repeated as (
        select key from keyed group by key having count(*) > 1
    ), repeated_rows as (
        select k.* from keyed k join repeated using (key)
    ), repeated_attributes as (
        select r.key, jsonb_object_agg(a.name, a.value order by r.line_number) as attributes
        from repeated_rows r cross join lateral jsonb_each(r.attributes) as a(name, value)
        where a.value <> 'null'::jsonb
        group by r.key
    ), merged as (
        select key, (array_agg(email order by line_number))[1] as email,
               bool_or(is_role_address) as is_role_address,
               {", ".join(_last_value(f) for f in _FIELDS)},
               (array_agg(raw_data order by line_number desc))[1] as raw_data
        from repeated_rows group by key
    ), distinct_addresses as (
        select k.key, k.email, k.is_role_address, {", ".join(f"k.{f}" for f in _FIELDS)},
               jsonb_strip_nulls(k.attributes) as attributes, k.raw_data
        from keyed k where not exists (select from repeated r where r.key = k.key)
        union all
        select m.key, m.email, m.is_role_address, {", ".join(f"m.{f}" for f in _FIELDS)},
               coalesce(a.attributes, '{{}}'::jsonb), m.raw_data
        from merged m left join repeated_attributes a using (key)
    )
    select d.*, c.id as contact_id, c.status as contact_status,
           (c.is_role_address, {", ".join(f"c.{f}" for f in _FIELDS)}, c.raw_data)
               is distinct from
           (d.is_role_address, {", ".join(f"coalesce(d.{f}, c.{f})" for f in _FIELDS)},
            d.raw_data)
           or not c.attributes @> d.attributes as changed
    from distinct_addresses d
    left join app.contacts c
        on c.tenant_id = (select app.current_tenant_id()) and lower(c.email) = d.key
    """
)

# New contacts are inserted in address order (index pages are visited in order, not at
# random), with the status their address has on the suppression list; each is added to the
# list with the existing contacts of the file, in id order. An existing contact is
# rewritten only when the file changes it.
_INSERT_AND_ADD = sa.text(
    f"""
    with inserted as (
        insert into app.contacts
            (tenant_id, email, is_role_address, {", ".join(_FIELDS)}, attributes, raw_data,
             status, upload_batch_id, created_at, updated_at)
        select (select app.current_tenant_id()), d.email, d.is_role_address,
               {", ".join(f"d.{f}" for f in _FIELDS)}, d.attributes, d.raw_data,
               case when s.id is null then 'active' when s.reason = 'bounce' then 'bounced'
                    when s.reason = 'complaint' then 'complained' else 'unsubscribed' end,
               :batch_id, :now, :now
        from deduped d left join app.suppressions s
            on s.tenant_id = (select app.current_tenant_id()) and lower(s.email) = d.key
        where d.contact_id is null
        order by d.key
        returning id, status
    ), batch_contacts as (
        select id, status from inserted
        union all
        select contact_id, contact_status from deduped where contact_id is not null
    ), added as (
        insert into app.contact_list_members (tenant_id, list_id, contact_id, added_at)
        select (select app.current_tenant_id()), :list_id, id, :now from batch_contacts order by id
        on conflict do nothing
        returning 1
    )
    select (select count(*) from inserted) as inserted,
           (select count(*) from added) as list_added,
           (select count(*) from batch_contacts where status <> 'active') as suppressed,
           (select count(*) from deduped where is_role_address) as role_addresses
    """
)
_UPDATE = sa.text(
    f"""
    update app.contacts c set
        is_role_address = d.is_role_address,
        {", ".join(f"{f} = coalesce(d.{f}, c.{f})" for f in _FIELDS)},
        attributes = c.attributes || d.attributes,
        raw_data = d.raw_data,
        updated_at = :now
    from deduped d
    where d.changed and c.tenant_id = (select app.current_tenant_id()) and c.id = d.contact_id
    """
)
# Uploads of one tenant take turns: the match of addresses to contacts holds until commit.
_UPLOAD_LOCK = sa.text(
    "select pg_advisory_xact_lock(hashtextextended('upload:' || app.current_tenant_id(), 0))"
)
_SAVE_REJECTS = sa.text(
    """
    insert into app.upload_rejects (tenant_id, batch_id, line_number, raw_row, reason)
    select (select app.current_tenant_id()), :batch_id, line_number, raw_row, reason
    from staged_rejects order by line_number limit :keep
    """
)


@dataclass(frozen=True)
class MergeCounts:
    staged: int
    distinct_addresses: int
    inserted: int
    updated: int
    list_added: int
    suppressed: int
    role_addresses: int

    @property
    def duplicates(self) -> int:
        return self.staged - self.distinct_addresses

    @property
    def unchanged(self) -> int:
        return self.distinct_addresses - self.inserted - self.updated


def ensure_list(conn: Connection, name: str, now: datetime) -> uuid.UUID:
    """The id of the tenant's list `name`, created if it does not exist yet."""
    return conn.execute(_UPSERT_LIST, {"name": check_list_name(name), "now": now}).scalar_one()


def check_list_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise IngestError("a list name must not be empty")
    if len(name) > MAX_LIST_NAME:
        raise IngestError(f"a list name must be at most {MAX_LIST_NAME} characters")
    return name


def lock_registration(conn: Connection, list_name: str, sha: str) -> None:
    conn.execute(_REGISTRATION_LOCK, {"list_name": list_name, "sha": sha})


def completed_batch(conn: Connection, list_name: str, sha: str) -> sa.Row | None:
    return conn.execute(_COMPLETED, {"list_name": list_name, "sha": sha}).first()


def unfinished_batch(conn: Connection, list_name: str, sha: str) -> uuid.UUID | None:
    return conn.execute(_UNFINISHED, {"list_name": list_name, "sha": sha}).scalar()


def register_batch(
    conn: Connection,
    *,
    list_name: str,
    file_name: str,
    sha: str,
    size: int,
    mapping: dict[str, str],
    source: str,
    now: datetime,
) -> uuid.UUID:
    return conn.execute(
        _REGISTER,
        {
            "list_name": list_name,
            "file_name": file_name,
            "sha": sha,
            "size": size,
            "mapping": json.dumps(mapping),
            "source": source,
            "now": now,
        },
    ).scalar_one()


def start_batch(conn: Connection, batch_id: uuid.UUID, now: datetime) -> None:
    conn.execute(_START, {"batch_id": batch_id, "now": now})


def lock_batch(conn: Connection, batch_id: uuid.UUID) -> str:
    return conn.execute(_LOCK, {"batch_id": batch_id}).scalar_one()


def fail_batch(conn: Connection, batch_id: uuid.UUID, error: str, now: datetime) -> None:
    conn.execute(_FAIL, {"batch_id": batch_id, "error": error, "now": now})


def batch_row(conn: Connection, batch_id: uuid.UUID) -> sa.Row:
    return conn.execute(_BY_ID, {"batch_id": batch_id}).one()


def recent_batches(conn: Connection, limit: int) -> list[sa.Row]:
    return list(conn.execute(_RECENT, {"limit": limit}).all())


def batches_by_prefix(conn: Connection, prefix: str, limit: int = 10) -> list[sa.Row]:
    """The tenant's batches whose id starts with `prefix` (hex digits, hyphens ignored),
    newest first. Raises `ValueError` for a prefix that is not hex or is too short."""
    digits = id_prefix(prefix, "batch id")
    return list(conn.execute(_BY_PREFIX, {"prefix": digits, "limit": limit}).all())


class _BoundedWriter(QueuedLibpqWriter):
    """psycopg's threaded COPY writer with a short queue: when PostgreSQL falls behind, the
    reader waits instead of piling up to 1024 buffers (128 MiB) of rows in memory."""

    QUEUE_BUFFERS = 64  # of at most 128 KiB each

    def __init__(self, cursor) -> None:
        super().__init__(cursor)
        self._queue = Queue(maxsize=self.QUEUE_BUFFERS)


class Stage:
    """Temporary tables of one load transaction, filled with `COPY` chunk by chunk.

    Each chunk is handed to a writer thread, so PostgreSQL ingests one chunk while polars
    prepares the next. Rejects wait in a file in `workdir` (one COPY runs at a time on a
    connection), so memory does not grow with them.
    """

    def __init__(self, conn: Connection, workdir: Path):
        self.conn = conn
        self.rows = 0
        conn.execute(_STAGE)
        self._cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        self._open = contextlib.ExitStack()
        self._copy = self._open.enter_context(
            self._cursor.copy(
                f"copy staged_contacts ({', '.join(STAGED_COLUMNS)}) from stdin (format csv)",
                writer=_BoundedWriter(self._cursor),
            )
        )
        self._rejects = (workdir / "rejects.csv").open("w+b")
        self._kept: dict[str, int] = {}

    def add(self, contacts: pl.DataFrame) -> None:
        if contacts.height:
            self._copy.write(contacts.write_csv(include_header=False))
            self.rows += contacts.height

    def add_rejects(self, rejects: pl.DataFrame, stream: str = "rows") -> None:
        """Stage the first `KEPT_REJECTS` rejects of each `stream` (each arrives in line
        order), so the batch can keep its first ones by line whichever stream they come from;
        the others are only counted, by the caller."""
        kept = self._kept.get(stream, 0)
        rejects = rejects.sort("line_number").head(max(KEPT_REJECTS - kept, 0))
        if rejects.height:
            rejects.select("line_number", "raw_row", "reason").write_csv(
                self._rejects, include_header=False
            )
            self._kept[stream] = kept + rejects.height

    def finish(self) -> None:
        self._open.close()  # ends the COPY of contacts
        self._rejects.seek(0)
        with (
            self._rejects,
            self._cursor.copy(
                "copy staged_rejects (line_number, raw_row, reason) from stdin (format csv)"
            ) as copy,
        ):
            while chunk := self._rejects.read(1 << 20):
                copy.write(chunk)
        self._cursor.close()

    def abort(self) -> None:
        with contextlib.suppress(Exception):  # the transaction is rolled back anyway
            self._open.__exit__(IngestError, IngestError("aborted"), None)
        self._rejects.close()
        self._cursor.close()


def merge(stage: Stage, batch_id: uuid.UUID, list_id: uuid.UUID, now: datetime) -> MergeCounts:
    conn = stage.conn
    conn.execute(_UPLOAD_LOCK)
    conn.execute(sa.text("set local work_mem = '256MB'"))  # sorts and hashes of a whole file
    distinct_addresses = conn.execute(_DEDUPLICATE).rowcount
    conn.execute(sa.text("analyze deduped"))
    updated = conn.execute(_UPDATE, {"now": now}).rowcount
    added = conn.execute(_INSERT_AND_ADD, {"batch_id": batch_id, "list_id": list_id, "now": now})
    counts = added.one()
    conn.execute(_SAVE_REJECTS, {"batch_id": batch_id, "keep": KEPT_REJECTS})
    return MergeCounts(
        staged=stage.rows,
        distinct_addresses=distinct_addresses,
        inserted=counts.inserted,
        updated=updated,
        list_added=counts.list_added,
        suppressed=counts.suppressed,
        role_addresses=counts.role_addresses,
    )


def complete_batch(conn: Connection, batch_id: uuid.UUID, **values: object) -> sa.Row:
    return conn.execute(_COMPLETE, {"batch_id": batch_id, **values}).one()
