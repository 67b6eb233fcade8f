"""The uploads inbox: `PENGUIN_HOME/uploads/inbox/<tenant>/<list>/<file>`.

A file dropped there is ingested into that tenant's list, then moved to `processed/` (or to
`failed/`, beside a `.error.txt` that says why), so it is never picked up twice. Whoever
drops a file may leave instructions beside it in `.<file>.upload.json` (an explicit column
mapping, and which door it came in by); the dashboard's uploader does.

Files appear by atomic rename when `drop` writes them; a file copied in by hand is only
taken once it has not changed for `SETTLE_SECONDS`, so a half-copied file is never read.

Everything here comes from users: a dropped file keeps only a safe base name of what the
browser or the user called it (never a path out of its folder), and instructions that cannot
be used (not JSON, not an object, a mapping that is not text to text, an unknown `source`)
end only their own file, which moves to `failed/` saying what is wrong with them.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import unicodedata
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy.engine import Engine

from engine.ingest import SOURCES, IngestError, IngestResult, Progress, ingest_file
from engine.ingest.store import check_list_name
from engine.tenants import UnknownTenantError, tenant_id, validate_name
from engine.text import readable_name, shown
from engine.userfiles import kind_of

SETTLE_SECONDS = 2.0
#: A folder name's bytes (file systems allow 255; room is left for the moved files' stamps).
MAX_FOLDER_BYTES = 200
#: Bytes of a dropped file's name, leaving room for the `-N`, the timestamp and the sidecar's
#: `.` and `.upload.json` within the 255 bytes most file systems allow.
MAX_NAME_BYTES = 150
DEFAULT_NAME = "upload.csv"


@dataclass(frozen=True)
class InboxFile:
    path: Path
    tenant: str
    list_name: str
    mapping: dict[str, str] = field(default_factory=dict)
    source: str = "inbox"
    #: What is wrong with the instructions beside the file; such a file is not ingested.
    problem: str | None = None

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


def inbox_file(inbox: Path, relative: str) -> Path:
    """The file `relative` (`<tenant>/<folder>/<file>`, as a sensor names it) inside `inbox`;
    ValueError for anything else (an absolute path, `..`, another depth): a run's config can
    name no file outside its inbox."""
    parts = Path(relative).parts
    if len(parts) != 3 or any(p in ("", ".", "..") for p in parts) or Path(relative).is_absolute():
        raise ValueError(f"{shown(relative, 200)!r} is not <tenant>/<folder>/<file> in {inbox}")
    path = inbox / relative
    # The folders are resolved, not the file: an entry that is a link is refused by its run
    # (`not_regular`), never followed.
    if path.parent.resolve() != inbox.resolve() / parts[0] / parts[1]:
        raise ValueError(f"{shown(relative, 200)!r} leads out of {inbox}")
    return path


def _sidecar(path: Path) -> Path:
    return path.with_name(f".{path.name}.upload.json")


def read_file(path: Path) -> InboxFile:
    """The inbox file at `path` (`.../inbox/<tenant>/<list>/<file>`) with its instructions.

    Never raises for bad instructions: they are the file's `problem`, for `process_file`.
    """
    tenant, list_name = path.parent.parent.name, path.parent.name
    if (problem := not_regular(path)) is not None:
        return InboxFile(path, tenant, list_name, problem=problem)
    if readable_name(tenant) != tenant or readable_name(list_name) != list_name:
        # Made on another system (Latin-1 bytes): not a tenant or list name anyone can type.
        problem = (
            f"its folder {shown(tenant)}/{shown(list_name)} has a name that is not valid UTF-8; "
            "rename the folder to the tenant's and the list's names"
        )
        return InboxFile(path, tenant, list_name, problem=problem)
    sidecar = _sidecar(path)
    try:
        mapping, source = _instructions(sidecar)
    except ValueError as exc:
        problem = f"{sidecar.name}, the instructions beside the file, {exc}"
        return InboxFile(path, tenant, list_name, problem=problem)
    return InboxFile(path, tenant, list_name, mapping=mapping, source=source)


def _instructions(sidecar: Path) -> tuple[dict[str, str], str]:
    """(mapping, source) from `sidecar`, or the defaults when there is none; raises
    `ValueError` saying what is wrong with it."""
    try:
        text = sidecar.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}, "inbox"
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:  # the file's name leaves no room for a sidecar's
            return {}, "inbox"
        raise ValueError(f"cannot be read ({shown(exc)})") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"cannot be read ({shown(exc)})") from None
    try:
        instructions = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
        ) from None
    if not isinstance(instructions, dict):
        raise ValueError(f"must be a JSON object, not {type(instructions).__name__}")
    mapping = instructions.get("mapping") or {}
    if not isinstance(mapping, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()
    ):
        raise ValueError('has a "mapping" that is not an object of column names to field names')
    source = instructions.get("source", "inbox")
    if source not in SOURCES:
        raise ValueError(f"names an unknown source '{shown(source)}' (one of {', '.join(SOURCES)})")
    return mapping, source


def waiting_paths(inbox: Path, *, now_timestamp: float | None = None) -> Iterator[Path]:
    """The entries of `inbox/<tenant>/<folder>/`, oldest name first, without hidden ones (a
    sidecar, a copy in progress) and folders; with `now_timestamp`, only those that have not
    changed for `SETTLE_SECONDS`. The uploads inbox and the events inbox list their files
    with it.

    Nothing outside the inbox is listed: tenant and list folders that are symbolic links are
    not entered. An entry that is not a regular file (a symbolic link, a FIFO, a device) is
    listed, so that its run moves it to `failed/` saying why (`not_regular`), instead of
    following it or blocking on it.
    """
    for path in sorted(_entries(inbox)):
        try:
            changed = path.lstat().st_mtime
        except FileNotFoundError:  # moved on (by its run) since the listing
            continue
        if now_timestamp is not None and now_timestamp - changed < SETTLE_SECONDS:
            continue
        yield path


def _entries(inbox: Path) -> Iterator[Path]:
    """`inbox/*/*/*` without entering symbolic links, hidden entries or folders."""
    for tenant in _folders(inbox):
        for folder in _folders(tenant):
            try:
                entries = list(os.scandir(folder))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                if not entry.name.startswith(".") and not entry.is_dir(follow_symlinks=False):
                    yield Path(entry.path)


def _folders(parent: Path) -> list[Path]:
    try:
        return [Path(e.path) for e in os.scandir(parent) if e.is_dir(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []


def not_regular(path: Path) -> str | None:
    """Why the inbox entry `path` cannot be taken (a symbolic link, a FIFO, a device), or
    None for a regular file: an inbox takes only files inside it."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return None  # gone: its run says so
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISLNK(mode):
        return "it is a symbolic link; the inbox takes only files: copy the file itself in"
    return f"it is {kind_of(mode)}, not a file; the inbox takes only regular files"


def pending_files(uploads: Path, *, now_timestamp: float | None = None) -> Iterator[InboxFile]:
    """Files waiting in the inbox (`waiting_paths`), with their instructions."""
    for path in waiting_paths(inbox_path(uploads), now_timestamp=now_timestamp):
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
    if len(os.fsencode(list_name)) > MAX_FOLDER_BYTES:
        raise IngestError(
            f"list name {shown(list_name, 40)} is too long for an inbox folder "
            f"({len(os.fsencode(list_name))} bytes, at most {MAX_FOLDER_BYTES}; "
            "penguin upload takes it)"
        )
    folder = inbox_path(uploads) / tenant / list_name
    folder.mkdir(parents=True, exist_ok=True)
    target = free_name(folder / safe_name(name or source.name))
    if target.parent.resolve() != folder.resolve():  # safe_name makes this impossible
        raise AssertionError(f"{target} is not in {folder}")
    if mapping or via != "inbox":
        _sidecar(target).write_text(
            json.dumps({"mapping": mapping or {}, "source": via}), encoding="utf-8"
        )
    tmp = folder / f".{target.name}.{uuid.uuid4().hex}.part"
    shutil.copyfile(source, tmp)
    tmp.rename(target)  # atomic: a reader never sees half a file
    return target


def safe_name(name: str) -> str:
    """An uploaded file's name as a plain file name in its inbox folder: the last component
    of a `/` or `\\` path, without control characters or leading dots (no hidden file, no
    `..`), at most `MAX_NAME_BYTES` (keeping the extension), or `DEFAULT_NAME` if nothing
    is left."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(c for c in base if unicodedata.category(c)[0] != "C")
    base = base.strip().lstrip(".").strip()
    if len(base.encode()) > MAX_NAME_BYTES:
        stem, dot, extension = base.rpartition(".")
        suffix = f".{extension}" if dot and stem and len(extension) <= 10 else ""
        room = MAX_NAME_BYTES - len(suffix.encode())
        kept = base[: len(base) - len(suffix)].encode()[:room].decode("utf-8", errors="ignore")
        base = kept.rstrip() + suffix
    return base or DEFAULT_NAME


def free_name(target: Path) -> Path:
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
    # A name copied in by hand may be 255 bytes or not UTF-8: the moved file's name is made
    # safe like an uploaded one's, so the stamp (and `.error.txt`) always fit.
    target = free_name(folder / f"{stamp}-{safe_name(readable_name(item.path.name))}")
    item.path.rename(target)
    try:
        _sidecar(item.path).unlink(missing_ok=True)
    except OSError as exc:
        if exc.errno != errno.ENAMETOOLONG:  # no sidecar can exist for such a name
            raise
    return target


def process_file(
    app: Engine, uploads: Path, item: InboxFile, now: datetime, progress: Progress | None = None
) -> InboxOutcome:
    """Ingest one inbox file and move it aside; its error, if any, is reported, not raised.

    A crash before the move leaves the file in the inbox and its batch unfinished; processing
    the file again resumes that batch.
    """
    stamp = now.strftime("%Y%m%dT%H%M%S")
    if item.problem is not None:
        return _fail(uploads, item, item.problem, stamp)
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
        return _fail(uploads, item, str(exc), stamp)
    return InboxOutcome(item, result, None, _move(uploads, item, "processed", stamp))


def _fail(uploads: Path, item: InboxFile, error: str, stamp: str) -> InboxOutcome:
    """Move `item` to `failed/`, beside a `.error.txt` that says why."""
    moved = _move(uploads, item, "failed", stamp)
    moved.with_name(moved.name + ".error.txt").write_text(f"{error}\n", encoding="utf-8")
    return InboxOutcome(item, None, error, moved)


def process_inbox(app: Engine, uploads: Path, now: datetime) -> list[InboxOutcome]:
    return [process_file(app, uploads, item, now) for item in pending_files(uploads)]
