"""The embedded PostgreSQL server (pgserver) under `PENGUIN_HOME`, for machines without one.

Who keeps the server up, and who stops it:

* every process that uses it (`penguin up`, `penguin upload`, a test) is a *holder* while it
  runs; pgserver lists holders' pids in `pgdata/.handle_pids.json`;
* the last holder to leave stops it, unless `penguin env` has marked it *kept*
  (`pgdata/.penguin-keep-running`): then it runs until `penguin db stop`, whatever commands
  come and go meanwhile;
* a holder that died without leaving (`kill -9`, a crash) holds nothing: pids of processes
  that no longer exist are dropped whenever the list is read.

pgserver's own rule (the last handle stops the server with the cleanup mode *that* process
chose) is not used: every process attaches with `cleanup_mode=None` and leaves through
`release_embedded_postgres`, which decides from the list and the mark. Both read and write
the list under pgserver's inter-process lock, so two processes leaving at once cannot both
think the other one stays.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

import psutil

from engine.config import Settings

_embedded: dict[Path, object] = {}  # resolved pgdata -> pgserver's handle

#: The mark `penguin env` leaves: keep the server running after the last holder leaves.
KEEP_MARK = ".penguin-keep-running"

#: The embedded server's settings where PostgreSQL's defaults are too small for this workload
#: (an engine pass rewrites every due enrollment; an upload merges a million contacts), in
#: `SHOW`'s spelling. Both take effect on a reload. Each is stored with ALTER SYSTEM unless
#: ALTER SYSTEM holds a value for it already (ours, or one the user chose, which is kept).
SERVER_SETTINGS = {
    # Defaults 1GB and 5min: a pass over a million enrollments writes ~1GB of WAL, which
    # forced a checkpoint in its middle and a full page image of every page touched again.
    "max_wal_size": "4GB",
    "checkpoint_timeout": "15min",
}


def _pgserver():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pgserver warns when XDG_RUNTIME_DIR is unset
        import pgserver
        import pgserver.postgres_server
        import pgserver.utils

    return pgserver


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _live_holders(pgdata: Path, *, without: int | None = None) -> list[int]:
    """The holders' pids that still run (minus `without`), written back; caller holds the lock."""
    holders = _pgserver().utils.DiskList(pgdata / ".handle_pids.json")
    live = [pid for pid in holders.get() if pid != without and _alive(pid)]
    holders.put(live)
    return live


def start_embedded_postgres(settings: Settings, *, keep_running: bool = False) -> str:
    """Start (or attach to) the server under `PENGUIN_HOME` as a holder; return its URL.

    `keep_running` (used by `penguin env`, whose exports must outlive the command) marks the
    server to stay up until `penguin db stop`.
    """
    pgdata = settings.pgdata.expanduser().resolve()
    if pgdata not in _embedded:
        pgserver = _pgserver()
        settings.home.mkdir(parents=True, exist_ok=True)
        with pgserver.postgres_server.PostgresServer._lock:
            if (pgdata / ".handle_pids.json").exists():
                _live_holders(pgdata)
        _embedded[pgdata] = server = pgserver.get_server(pgdata, cleanup_mode=None)
        # Registered after pgserver's own exit hook, so it runs first (atexit is LIFO).
        atexit.register(_release, pgdata)
        _apply_settings(server.get_uri())
    if keep_running:
        (pgdata / KEEP_MARK).touch()
    return _embedded[pgdata].get_uri()  # type: ignore[attr-defined]


def _apply_settings(url: str) -> None:
    """Store and load `SERVER_SETTINGS` where the server still has PostgreSQL's defaults."""
    import sqlalchemy as sa

    from engine.db import sqlalchemy_url

    owner = sa.create_engine(sqlalchemy_url(url), isolation_level="AUTOCOMMIT")
    try:
        with owner.connect() as conn:
            stored = set(
                conn.execute(
                    sa.text(
                        "select name from pg_catalog.pg_file_settings "
                        "where name = any(:names) and sourcefile like '%/postgresql.auto.conf'"
                    ),
                    {"names": list(SERVER_SETTINGS)},
                ).scalars()
            )
            missing = sorted(set(SERVER_SETTINGS) - stored)
            for name in missing:
                # ALTER SYSTEM takes no parameters; names and values are the constants above.
                conn.execute(sa.text(f"alter system set {name} = '{SERVER_SETTINGS[name]}'"))
            if missing:
                conn.execute(sa.text("select pg_catalog.pg_reload_conf()"))
    finally:
        owner.dispose()


def _pg_ctl(pgdata: Path, args: list[str]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pgserver._commands import pg_ctl
    # As root, pgserver runs the server as its own system user, and pg_ctl refuses root.
    user = "pgserver" if hasattr(os, "geteuid") and os.geteuid() == 0 else None
    pg_ctl(["-w", "-m", "fast", *args], pgdata=pgdata, user=user)


def _pg_ctl_stop(pgdata: Path) -> None:
    if not (pgdata / "postmaster.pid").exists():
        return
    # A server that went down meanwhile makes pg_ctl fail: nothing to stop, then.
    with contextlib.suppress(subprocess.CalledProcessError):
        _pg_ctl(pgdata, ["stop"])


def release_embedded_postgres(settings: Settings) -> bool:
    """This process stops holding the server; stops it if no live holder is left and it is
    not kept. Returns whether it stopped the server."""
    return _release(settings.pgdata.expanduser().resolve())


def _release(pgdata: Path) -> bool:
    if _embedded.pop(pgdata, None) is None:
        return False
    if not (pgdata / "PG_VERSION").exists():  # the folder went first (a temporary home)
        return False
    with _pgserver().postgres_server.PostgresServer._lock:
        others = _live_holders(pgdata, without=os.getpid())
        if others or (pgdata / KEEP_MARK).exists():
            return False
        _pg_ctl_stop(pgdata)
        return True


#: Kept for callers that started the server: leaving is releasing.
stop_embedded_postgres = release_embedded_postgres


@dataclass(frozen=True)
class StopOutcome:
    """What `penguin db stop` found: whether it stopped the server, or who still uses it."""

    was_running: bool
    stopped: bool
    holders: tuple[str, ...] = ()


def stop_kept_server(settings: Settings) -> StopOutcome:
    """`penguin db stop`: drop the keep mark; stop the server unless a live process uses it.

    Dead holders (killed processes) are ignored; live ones are named (pid and command) so the
    user knows what to stop first.
    """
    pgdata = settings.pgdata
    if not (pgdata / "postmaster.pid").exists():
        (pgdata / KEEP_MARK).unlink(missing_ok=True)
        return StopOutcome(was_running=False, stopped=False)
    pgdata = pgdata.resolve()
    with _pgserver().postgres_server.PostgresServer._lock:
        (pgdata / KEEP_MARK).unlink(missing_ok=True)
        others = _live_holders(pgdata, without=os.getpid())
        if others:
            return StopOutcome(True, False, tuple(_describe(pid) for pid in others))
        _pg_ctl_stop(pgdata)
    return StopOutcome(was_running=True, stopped=not (pgdata / "postmaster.pid").exists())


def _describe(pid: int) -> str:
    try:
        command = " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        command = "?"
    return f"pid {pid} ({command[:80]})"
