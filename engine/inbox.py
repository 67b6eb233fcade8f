"""The uploads inbox: `PENGUIN_HOME/uploads/inbox/<tenant>/<list>/<file>.csv`.

A file dropped there is ingested into that tenant's list, then moved to `processed/` (or to
`failed/`, beside a `.error.txt` that says why), so it is never picked up twice.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy.engine import Engine

from engine.ingest import IngestError, IngestResult, ingest_csv
from engine.tenants import UnknownTenantError, tenant_id


@dataclass(frozen=True)
class InboxFile:
    path: Path
    tenant: str
    list_name: str


@dataclass(frozen=True)
class InboxOutcome:
    file: InboxFile
    result: IngestResult | None
    error: str | None
    moved_to: Path


def inbox_path(uploads: Path) -> Path:
    return uploads / "inbox"


def pending_files(uploads: Path) -> Iterator[InboxFile]:
    inbox = inbox_path(uploads)
    for path in sorted(inbox.glob("*/*/*")):
        if path.is_file() and not path.name.startswith("."):
            yield InboxFile(path=path, tenant=path.parent.parent.name, list_name=path.parent.name)


def drop(uploads: Path, source: Path, tenant: str, list_name: str) -> Path:
    """Copy `source` into the inbox for `tenant`/`list_name`; return where it landed."""
    folder = inbox_path(uploads) / tenant / list_name
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / source.name
    tmp = folder / f".{source.name}.part"
    shutil.copyfile(source, tmp)
    tmp.rename(target)  # atomic: a reader never sees half a file
    return target


def _move(uploads: Path, item: InboxFile, outcome: str, stamp: str) -> Path:
    folder = uploads / outcome / item.tenant / item.list_name
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{stamp}-{item.path.name}"
    item.path.rename(target)
    return target


def process_inbox(app: Engine, uploads: Path, now: datetime) -> list[InboxOutcome]:
    outcomes = []
    stamp = now.strftime("%Y%m%dT%H%M%S")
    for item in pending_files(uploads):
        try:
            tid = tenant_id(app, item.tenant)
            result = ingest_csv(app, tid, item.path, item.list_name, now)
        except Exception as exc:  # noqa: BLE001 - one bad file must not block the inbox
            message = (
                str(exc)
                if isinstance(exc, IngestError | UnknownTenantError)
                else (f"unexpected {exc.__class__.__name__} while ingesting: {exc}")
            )
            moved = _move(uploads, item, "failed", stamp)
            moved.with_name(moved.name + ".error.txt").write_text(f"{message}\n")
            outcomes.append(InboxOutcome(item, None, message, moved))
        else:
            outcomes.append(
                InboxOutcome(item, result, None, _move(uploads, item, "processed", stamp))
            )
    return outcomes
