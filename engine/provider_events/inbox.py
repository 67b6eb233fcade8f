"""The events inbox: `PENGUIN_HOME/events/inbox/<tenant>/<provider>/<file>`.

A provider's export dropped there is imported into that tenant, then moved to `processed/`
(or to `failed/`, beside a `.error.txt` that says why), so it is never imported twice; a Dagster
sensor starts one run per waiting file. Like the uploads inbox (`engine.inbox`), a file copied
in by hand is taken only once it has not changed for `SETTLE_SECONDS`, and a file in a folder
that names no known provider, or no tenant, moves to `failed/` saying so.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy.engine import Engine

from engine.inbox import free_name, not_regular, safe_name, waiting_paths
from engine.provider_events.formats import FORMATS
from engine.provider_events.imports import EventImportError, ImportResult, import_events
from engine.tenants import UnknownTenantError, tenant_id, validate_name
from engine.text import readable_name, shown


@dataclass(frozen=True)
class EventFile:
    path: Path
    tenant: str
    provider: str
    #: Why the file cannot be imported from where it is, or None.
    problem: str | None = None

    @property
    def where(self) -> str:
        return f"{self.tenant}/{self.provider}/{self.path.name}"


@dataclass(frozen=True)
class EventFileOutcome:
    file: EventFile
    result: ImportResult | None
    error: str | None
    moved_to: Path


def inbox_folder(root: Path, tenant: str, provider: str) -> Path:
    return root / "inbox" / tenant / provider


def read_file(path: Path) -> EventFile:
    tenant, provider = path.parent.parent.name, path.parent.name
    problem = not_regular(path)
    if problem is None and (readable_name(tenant) != tenant or readable_name(provider) != provider):
        problem = f"its folder {shown(tenant)}/{shown(provider)} has a name that is not valid UTF-8"
    elif problem is None and provider not in FORMATS:
        problem = (
            f"its folder {shown(provider)!r} names no provider; put the file in a folder named "
            f"for its format: {', '.join(FORMATS)}"
        )
    return EventFile(path, tenant, provider, problem)


def pending_files(root: Path, *, now_timestamp: float | None = None) -> Iterator[EventFile]:
    """Files waiting in the inbox, oldest name first; with `now_timestamp`, only those that
    have not changed for `SETTLE_SECONDS`."""
    for path in waiting_paths(root / "inbox", now_timestamp=now_timestamp):
        yield read_file(path)


def drop(root: Path, source: Path, tenant: str, provider: str, *, name: str | None = None) -> Path:
    """Copy `source` into the inbox for `tenant`/`provider` (atomically); where it landed."""
    validate_name(tenant)
    if provider not in FORMATS:
        raise ValueError(f"unknown provider {provider!r}; one of {', '.join(FORMATS)}")
    folder = inbox_folder(root, tenant, provider)
    folder.mkdir(parents=True, exist_ok=True)
    target = free_name(folder / safe_name(name or source.name))
    tmp = folder / f".{target.name}.part"
    shutil.copyfile(source, tmp)
    tmp.rename(target)  # atomic: the sensor never sees half a file
    return target


def _move(root: Path, item: EventFile, outcome: str, stamp: str) -> Path:
    folder = root / outcome / safe_name(readable_name(item.tenant)) / safe_name(item.provider)
    folder.mkdir(parents=True, exist_ok=True)
    target = free_name(folder / f"{stamp}-{safe_name(readable_name(item.path.name))}")
    item.path.rename(target)
    return target


def process_file(
    app: Engine, root: Path, item: EventFile, now: datetime, progress=None
) -> EventFileOutcome:
    """Import one inbox file and move it aside; its error, if any, is reported, not raised.
    A crash before the move leaves the file in the inbox; importing it again resumes its
    batch (or finds it imported)."""
    stamp = now.strftime("%Y%m%dT%H%M%S")
    error = item.problem
    result = None
    if error is None:
        try:
            result = import_events(
                app,
                tenant_id(app, item.tenant),
                item.path,
                item.provider,
                now,
                source="inbox",
                progress=progress,
            )
        except (EventImportError, UnknownTenantError) as exc:
            error = str(exc)
    if error is not None:
        moved = _move(root, item, "failed", stamp)
        moved.with_name(moved.name + ".error.txt").write_text(f"{error}\n", encoding="utf-8")
        return EventFileOutcome(item, None, error, moved)
    return EventFileOutcome(item, result, None, _move(root, item, "processed", stamp))
