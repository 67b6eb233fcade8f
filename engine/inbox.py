"""The uploads inbox: `PENGUIN_HOME/uploads/inbox/<tenant>/<list>/<file>`.

A file dropped there is ingested into that tenant's list, then moved to `processed/` (or to
`failed/`, beside a `.error.txt` that says why), so it is never picked up twice. Whoever
drops a file may leave instructions beside it in `.<file>.upload.json` (an explicit column
mapping, and which door it came in by); the dashboard's uploader does.

Files appear by atomic rename when `drop` writes them; a file copied in by hand is only
taken once it has not changed for `SETTLE_SECONDS`, so a half-copied file is never read.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy.engine import Engine

from engine.db import tenant_transaction
from engine.ingest import IngestError, IngestResult, Progress, ingest_file
from engine.ingest.store import check_list_name, completed_batch
from engine.tenants import UnknownTenantError, tenant_id, validate_name

SETTLE_SECONDS = 2.0


@dataclass(frozen=True)
class InboxFile:
    path: Path
    tenant: str
    list_name: str
    mapping: dict[str, str] = field(default_factory=dict)
    source: str = "inbox"

    @property
    def where(self) -> str:
        return f"{self.tenant}/{self.list_name}/{self.path.name}"


@dataclass(frozen=True)
class InboxOutcome:
    file: InboxFile
    result: IngestResult | None
    error: str | None
    moved_to: Path


def inbox_path(uploads: Path) -> Path:
    return uploads / "inbox"


def _sidecar(path: Path) -> Path:
    return path.with_name(f".{path.name}.upload.json")


def read_file(path: Path) -> InboxFile:
    """The inbox file at `path` (`.../inbox/<tenant>/<list>/<file>`) with its instructions."""
    instructions = {}
    if _sidecar(path).exists():
        instructions = json.loads(_sidecar(path).read_text(encoding="utf-8"))
    return InboxFile(
        path=path,
        tenant=path.parent.parent.name,
        list_name=path.parent.name,
        mapping=dict(instructions.get("mapping") or {}),
        source=instructions.get("source", "inbox"),
    )


def pending_files(uploads: Path, *, now_timestamp: float | None = None) -> Iterator[InboxFile]:
    """Files waiting in the inbox, oldest name first; with `now_timestamp`, only those that
    have not changed for `SETTLE_SECONDS`."""
    for path in sorted(inbox_path(uploads).glob("*/*/*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        if now_timestamp is not None and now_timestamp - path.stat().st_mtime < SETTLE_SECONDS:
            continue
        yield read_file(path)


def drop(
    uploads: Path,
    source: Path,
    tenant: str,
    list_name: str,
    *,
    mapping: dict[str, str] | None = None,
    via: str = "inbox",
    name: str | None = None,
) -> Path:
    """Copy `source` into the inbox for `tenant`/`list_name`; return where it landed.

    Raises `IngestError` when the list name cannot be a folder of the inbox.
    """
    try:
        validate_name(tenant)
    except ValueError as exc:
        raise IngestError(str(exc)) from None
    list_name = check_list_name(list_name)
    if "/" in list_name or "\\" in list_name or list_name.startswith("."):
        raise IngestError(
            f"list name {list_name!r} cannot be used for an inbox folder: it must not contain "
            "'/' or '\\' or start with '.' (penguin upload takes any name)"
        )
    folder = inbox_path(uploads) / tenant / list_name
    folder.mkdir(parents=True, exist_ok=True)
    target = _free_name(folder / (name or source.name))
    if mapping or via != "inbox":
        _sidecar(target).write_text(
            json.dumps({"mapping": mapping or {}, "source": via}), encoding="utf-8"
        )
    tmp = folder / f".{target.name}.{uuid.uuid4().hex}.part"
    shutil.copyfile(source, tmp)
    tmp.rename(target)  # atomic: a reader never sees half a file
    return target


def _free_name(target: Path) -> Path:
    """`target`, or `name-2.csv`, `name-3.csv`, ... if a file of that name is waiting."""
    n = 1
    candidate = target
    while candidate.exists():
        n += 1
        candidate = target.with_name(f"{target.stem}-{n}{target.suffix}")
    return candidate


def _move(uploads: Path, item: InboxFile, outcome: str, stamp: str) -> Path:
    folder = uploads / outcome / item.tenant / item.list_name
    folder.mkdir(parents=True, exist_ok=True)
    target = _free_name(folder / f"{stamp}-{item.path.name}")
    item.path.rename(target)
    _sidecar(item.path).unlink(missing_ok=True)
    return target


def process_file(
    app: Engine, uploads: Path, item: InboxFile, now: datetime, progress: Progress | None = None
) -> InboxOutcome:
    """Ingest one inbox file and move it aside; its error, if any, is reported, not raised.

    A crash before the move leaves the file in the inbox and its batch unfinished; processing
    the file again resumes that batch.
    """
    stamp = now.strftime("%Y%m%dT%H%M%S")
    try:
        tid = tenant_id(app, item.tenant)
        result = ingest_file(
            app,
            tid,
            item.path,
            item.list_name,
            now,
            mapping=item.mapping,
            source=item.source,
            progress=progress,
        )
    except (IngestError, UnknownTenantError) as exc:
        moved = _move(uploads, item, "failed", stamp)
        moved.with_name(moved.name + ".error.txt").write_text(f"{exc}\n", encoding="utf-8")
        return InboxOutcome(item, None, str(exc), moved)
    return InboxOutcome(item, result, None, _move(uploads, item, "processed", stamp))


def already_loaded(app: Engine, item: InboxFile, sha: str) -> bool:
    """Whether content `sha` was loaded into this file's list before."""
    try:
        tid = tenant_id(app, item.tenant)
    except UnknownTenantError:
        return False
    with tenant_transaction(app, tid) as conn:
        return completed_batch(conn, item.list_name.strip(), sha) is not None


def process_inbox(app: Engine, uploads: Path, now: datetime) -> list[InboxOutcome]:
    return [process_file(app, uploads, item, now) for item in pending_files(uploads)]
