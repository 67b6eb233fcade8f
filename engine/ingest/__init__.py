"""CSV uploads: one file becomes one upload batch, clean contacts in a named list, and a
line-numbered reject for every row that could not be used.

The dashboard's uploader, `penguin upload` and the uploads inbox all end in `ingest_file`:

* the batch is registered (`pending`), then marked `processing` in its own transaction, so
  anyone watching sees it;
* the file is read in chunks (`source`), cleaned (`clean`) and staged in PostgreSQL, then
  merged, its rejects saved and the batch `completed`, all in one transaction (`store`);
* a file that cannot be used at all, or a crash, leaves the batch `failed` (or `processing`)
  with nothing of the file written; ingesting the same file into the same list again resumes
  that batch, and once a batch is completed the same content is not loaded twice, even when
  two uploads of it start at the same moment (registration takes turns per content and list).

Whatever goes wrong while a file is read reaches the caller as one `IngestError` naming the
file (DuckDB's errors and unexpected ones included, the original chained as its cause), and
is recorded on the batch: the CLI, the inbox and the upload page show one line, never a
traceback.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb
import polars as pl
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from engine.db import tenant_transaction
from engine.ingest import store
from engine.ingest.clean import clean_chunk
from engine.ingest.columns import FIELDS, check_fields, map_columns, parse_mapping
from engine.ingest.errors import IngestError
from engine.ingest.source import (
    LINE,
    CsvScan,
    Survey,
    open_duckdb,
    positions,
    sniff_format,
    survey,
    to_utf8,
)
from engine.text import readable_name, shown, shown_list
from engine.userfiles import UserFileError

#: progress(stage, done, total): stage is "reading" (rows) or "merging" (no counts).
Progress = Callable[[str, int, int | None], None]
SOURCES = ("cli", "dashboard", "inbox")
PREVIEW_ROWS = 20


@dataclass(frozen=True)
class IngestResult:
    batch_id: uuid.UUID
    list_id: uuid.UUID | None
    list_name: str
    file_name: str
    total_rows: int
    inserted: int
    updated: int
    unchanged: int
    duplicates: int
    rejected: int
    suppressed: int
    role_addresses: int
    list_added: int
    file_format: dict
    column_mapping: dict
    #: True when this content was loaded into this list before and nothing was done now.
    already_loaded: bool = False

    @classmethod
    def from_row(cls, row: sa.Row, *, already_loaded: bool = False) -> IngestResult:
        return cls(
            batch_id=row.id,
            list_id=row.list_id,
            list_name=row.list_name,
            file_name=row.file_name,
            total_rows=row.total_rows,
            inserted=row.inserted_count,
            updated=row.updated_count,
            unchanged=row.unchanged_count,
            duplicates=row.duplicate_count,
            rejected=row.rejected_count,
            suppressed=row.suppressed_count,
            role_addresses=row.role_address_count,
            list_added=row.list_added_count,
            file_format=row.file_format,
            column_mapping=row.column_mapping,
            already_loaded=already_loaded,
        )

    def counts(self) -> dict[str, int]:
        return {
            "total": self.total_rows,
            "inserted": self.inserted,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "suppressed": self.suppressed,
            "role_addresses": self.role_addresses,
        }


def ingest_file(
    app: Engine,
    tenant_id: uuid.UUID,
    path: Path,
    list_name: str,
    now: datetime,
    *,
    mapping: Mapping[str, str] | None = None,
    source: str = "cli",
    file_name: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> IngestResult:
    """Load `path` into the tenant's contacts and its list `list_name`.

    Raises `IngestError` (after recording the batch as failed) when the file cannot be used.
    Unless `force`, content already loaded into this list returns that batch's result.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}")
    file_name = readable_name(file_name or path.name)
    list_name = store.check_list_name(list_name)
    explicit = dict(mapping or {})
    check_fields(explicit)
    # One read: hash, size, encoding, longest line. An inbox's entry was checked to be no
    # link; one put in its place since is refused.
    surveyed = _survey(path, shown(file_name), follow_links=source != "inbox")
    sha, size = surveyed.sha256, surveyed.size
    with tenant_transaction(app, tenant_id) as conn:
        # Concurrent uploads of this content into this list take turns from here to commit,
        # so the second finds the first's batch instead of registering its own.
        store.lock_registration(conn, list_name, sha)
        if not force and (done := store.completed_batch(conn, list_name, sha)) is not None:
            return IngestResult.from_row(done, already_loaded=True)
        batch_id = None if force else store.unfinished_batch(conn, list_name, sha)
        if batch_id is None:
            batch_id = store.register_batch(
                conn,
                list_name=list_name,
                file_name=file_name,
                sha=sha,
                size=size,
                mapping=explicit,
                source=source,
                now=now,
            )
    with tenant_transaction(app, tenant_id) as conn:
        store.start_batch(conn, batch_id, now)
    try:
        return _load(
            app, tenant_id, batch_id, path, surveyed, list_name, file_name, explicit, now, progress
        )
    except Exception as exc:
        error = _as_ingest_error(exc, shown(file_name))
        with tenant_transaction(app, tenant_id) as conn:
            store.fail_batch(conn, batch_id, str(error), now)
        if error is exc:
            raise
        raise error from exc


def _survey(path: Path, label: str, *, follow_links: bool = True) -> Survey:
    try:
        return survey(path, label, follow_links=follow_links)
    except UserFileError as exc:
        raise IngestError(str(exc)) from None
    except OSError as exc:
        raise IngestError(f"{label}: cannot be read ({exc.strerror or exc})") from exc


def _as_ingest_error(exc: Exception, label: str) -> IngestError:
    """`exc` as the one-line error a user sees, naming the file (`label`)."""
    if isinstance(exc, IngestError):
        return exc
    if isinstance(exc, duckdb.Error | pl.exceptions.PolarsError):
        # A parser's message speaks of its state machine and options, not of the file: the
        # user gets what to do, and the original stays chained as the cause for a developer.
        return IngestError(
            f"{label}: the file cannot be read as CSV (its quotes, delimiters or line ends do "
            "not fit together); open it in a spreadsheet program, save it as CSV UTF-8 and "
            "upload that"
        )
    first_line = next((line for line in str(exc).splitlines() if line.strip()), "")
    detail = shown(first_line, 200) or type(exc).__name__
    if isinstance(exc, OSError):
        return IngestError(f"{label}: the file cannot be read ({detail})")
    return IngestError(
        f"{label}: the upload failed unexpectedly ({type(exc).__name__}: {detail}); "
        "nothing of it was saved, and uploading it again retries it"
    )


def _load(
    app: Engine,
    tenant_id: uuid.UUID,
    batch_id: uuid.UUID,
    path: Path,
    surveyed: Survey,
    list_name: str,
    file_name: str,
    explicit: dict[str, str],
    now: datetime,
    progress: Progress | None,
) -> IngestResult:
    report = progress or (lambda stage, done, total: None)
    label = shown(file_name)
    with (
        tempfile.TemporaryDirectory(prefix="penguin-ingest-") as work,
        tenant_transaction(app, tenant_id) as conn,
    ):
        if store.lock_batch(conn, batch_id) == "completed":  # a concurrent retry finished it
            return IngestResult.from_row(store.batch_row(conn, batch_id), already_loaded=True)
        readable = to_utf8(path, surveyed, Path(work), label)
        duck = open_duckdb(Path(work))
        try:
            fmt = sniff_format(duck, readable, label)
            scan = CsvScan(duck, readable, fmt, label)
            if scan.count() == 0:
                if scan.rejects:
                    first = scan.rejects[0]
                    raise IngestError(
                        f"{label}: none of its {len(scan.rejects)} lines can be read; "
                        f"line {first.line}: {first.reason}"
                    )
                raise IngestError(
                    f"{label}: the file has a header row ({shown_list(fmt.columns)}) "
                    "but no data rows"
                )
            report("reading", 0, scan.total_records)
            stage = store.Stage(conn, Path(work))
            try:
                columns, done = None, 0
                for frame in scan.batches():
                    if columns is None:
                        sample = frame.head(1000).drop(LINE)
                        columns = map_columns(
                            fmt.columns,
                            explicit,
                            sample=sample.rename(
                                dict(zip(sample.columns, fmt.columns, strict=True))
                            ),
                            file_name=label,
                        )
                    chunk = clean_chunk(frame, fmt.columns, columns, fmt.delimiter)
                    stage.add(chunk.contacts)
                    stage.add_rejects(chunk.rejects)
                    done += frame.height
                    report("reading", done + len(scan.rejects), scan.total_records)
                stage.add_rejects(scan.rejects_frame(), stream="unreadable lines")
                stage.finish()
            except BaseException:
                stage.abort()
                raise
        finally:
            duck.close()
        report("merging", 0, None)
        list_id = store.ensure_list(conn, list_name, now)
        counts = store.merge(stage, batch_id, list_id, now)
        rejected = scan.total_records - counts.staged
        row = store.complete_batch(
            conn,
            batch_id,
            now=now,
            list_id=list_id,
            mapping=_json(columns),
            file_format=_json(fmt.as_json()),
            total_rows=scan.total_records,
            inserted=counts.inserted,
            updated=counts.updated,
            unchanged=counts.unchanged,
            duplicates=counts.duplicates,
            rejected=rejected,
            suppressed=counts.suppressed,
            role_addresses=counts.role_addresses,
            list_added=counts.list_added,
        )
        return IngestResult.from_row(row)


@dataclass(frozen=True)
class Preview:
    """How a file would be read and mapped, and its first rows: what the upload page shows
    before a file is queued, so a user can correct the mapping."""

    file_format: dict
    #: {column: field} as `ingest_file` would use it; may lack `email` (see `problem`).
    mapping: dict[str, str]
    #: The first rows, one column per header, as text.
    rows: pl.DataFrame
    #: Why the file could not be ingested as mapped, or None.
    problem: str | None


def preview_file(
    path: Path,
    *,
    file_name: str | None = None,
    mapping: Mapping[str, str] | None = None,
    rows: int = PREVIEW_ROWS,
) -> Preview:
    """Read the head of `path` the way `ingest_file` would, without touching the database.

    Raises `IngestError` when the file cannot be read at all (not a CSV, no rows, ...).
    """
    label = shown(file_name or path.name)
    explicit = dict(mapping or {})
    check_fields(explicit)
    try:
        return _preview(path, label, explicit, rows)
    except Exception as exc:
        error = _as_ingest_error(exc, label)
        if error is exc:
            raise
        raise error from exc


def _preview(path: Path, label: str, explicit: dict[str, str], rows: int) -> Preview:
    surveyed = _survey(path, label)
    with tempfile.TemporaryDirectory(prefix="penguin-preview-") as work:
        readable = to_utf8(path, surveyed, Path(work), label)
        duck = open_duckdb(Path(work))
        try:
            fmt = sniff_format(duck, readable, label)
            head = next(CsvScan(duck, readable, fmt, label).batches(), None)
        finally:
            duck.close()
    if head is None or head.is_empty():
        raise IngestError(f"{label}: the file has no data rows")
    head = head.drop(LINE).rename(dict(zip(positions(len(fmt.columns)), fmt.columns, strict=True)))
    found = map_columns(
        fmt.columns, explicit, sample=head.head(1000), file_name=label, require_email=False
    )
    problem = None
    if "email" not in found.values():
        problem = (
            f"no column looks like an email address; columns found: {shown_list(fmt.columns)}. "
            "Choose the address column."
        )
    return Preview(fmt.as_json(), found, head.head(rows), problem)


def _json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


__all__ = [
    "FIELDS",
    "IngestError",
    "IngestResult",
    "Preview",
    "Progress",
    "SOURCES",
    "preview_file",
    "survey",
    "ingest_file",
    "parse_mapping",
]
