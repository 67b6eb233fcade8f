"""`penguin up`: start every part of the system, print where it is, stop all of it on exit.

Order: PostgreSQL (embedded unless DATABASE_URL), the SMTP sink, migrations, optional demo
data (run through Dagster, so its runs show in the UI), then `dagster dev` and Streamlit.
Each child runs in its own process group; stopping ends the whole group, because
`dagster dev` leaves its code servers behind when only it is signalled.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from engine import demo, migrate
from engine.config import PROJECT_ROOT, Settings
from engine.db import Database, connection_parts
from engine.embedded import start_embedded_postgres, stop_embedded_postgres
from engine.smtp_sink import SmtpSink

DAGSTER_YAML = """\
# Written by `penguin up`. Run, event and schedule storage stay here (SQLite), so the
# Dagster UI keeps its history across restarts.
telemetry:
  enabled: false
"""


def exported_environment(db: Database) -> dict[str, str]:
    """The variables every process needs to share this database, sink and home."""
    settings = db.settings
    parts = connection_parts(db.owner_url)
    env = {
        "PENGUIN_HOME": str(settings.home),
        "DATABASE_URL": db.owner_url.set(drivername="postgresql").render_as_string(
            hide_password=False
        ),
        "PENGUIN_PG_HOST": parts.host,
        "PENGUIN_PG_PORT": str(parts.port),
        "PENGUIN_PG_DATABASE": parts.dbname,
        "PENGUIN_SMTP_SINK_PORT": str(settings.smtp_sink_port),
        "DAGSTER_HOME": str(settings.dagster_home),
        "DO_NOT_TRACK": "1",
        "DAGSTER_DISABLE_TELEMETRY": "1",
    }
    for name, value in (
        ("PENGUIN_APP_PASSWORD", settings.app_password),
        ("PENGUIN_ANALYTICS_PASSWORD", settings.analytics_password),
    ):
        if value:
            env[name] = value
    return env


def shell_exports(env: Mapping[str, str]) -> str:
    return "\n".join(f"export {name}={shlex.quote(value)}" for name, value in env.items())


def prepare_dagster_home(settings: Settings) -> None:
    settings.dagster_home.mkdir(parents=True, exist_ok=True)
    config = settings.dagster_home / "dagster.yaml"
    if not config.exists():
        config.write_text(DAGSTER_YAML)


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= response.status < 400
    except (urllib.error.URLError, OSError):
        return False


_LOCATIONS = json.dumps(
    {
        "query": """
{ workspaceOrError { ... on Workspace { locationEntries {
    name loadStatus
    locationOrLoadError { __typename ... on PythonError { message } }
} } } }"""
    }
).encode()


class StartupError(RuntimeError):
    pass


def dagster_ready(base_url: str, timeout: float = 5.0) -> bool:
    """The webserver answers and every code location has loaded (assets are visible).

    A code location that failed to load is a startup error, not something to wait for.
    """
    request = urllib.request.Request(
        f"{base_url}/graphql", data=_LOCATIONS, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            entries = json.load(response)["data"]["workspaceOrError"]["locationEntries"]
    except (urllib.error.URLError, OSError, KeyError, TypeError, ValueError):
        return False
    if not entries or any(e["loadStatus"] != "LOADED" for e in entries):
        return False
    for entry in entries:
        loaded = entry["locationOrLoadError"] or {}
        if loaded.get("__typename") == "PythonError":
            raise StartupError(
                f"Dagster could not load code location {entry['name']}: "
                f"{loaded.get('message', '').strip()}"
            )
    return True


#: The largest file the dashboard's upload page takes (Streamlit's default is 200).
MAX_DASHBOARD_UPLOAD_MB = 500


@dataclass
class Child:
    name: str
    args: list[str]
    log: Path
    ready: Callable[[], bool]
    process: subprocess.Popen | None = None

    def start(self, env: Mapping[str, str], cwd: Path) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        handle = self.log.open("ab")
        self.process = subprocess.Popen(
            self.args,
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: we signal the group, not the leader
        )
        handle.close()

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def stop(self, grace: float = 20.0) -> None:
        if self.process is None:
            return
        pgid = self.process.pid
        _signal_group(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(grace)
        # Whatever is left of the group (dagster's code servers, streamlit workers) goes now.
        _signal_group(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)

    def log_tail(self, lines: int = 30) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


@dataclass
class Stack:
    settings: Settings
    console: Console
    demo: bool = False
    children: list[Child] = field(default_factory=list)
    sink: SmtpSink | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def request_stop(self, *_: object) -> None:
        self._stop.set()

    def run(self) -> int:
        # The children run in sessions of their own, so a closed terminal (SIGHUP) reaches
        # only this process: every stop signal ends everything the same way.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(sig, self.request_stop)
        try:
            self._start()
            if self._stop.is_set():
                return 0
            self._announce()
            return self._watch()
        except StartupError as exc:
            self.console.print(f"[bold red]penguin up failed:[/] {exc}")
            return 1
        finally:
            self._shutdown()

    def _start(self) -> None:
        settings, console = self.settings, self.console
        for name, port in (
            ("PENGUIN_DAGSTER_PORT", settings.dagster_port),
            ("PENGUIN_DASHBOARD_PORT", settings.dashboard_port),
            ("PENGUIN_SMTP_SINK_PORT", settings.smtp_sink_port),
        ):
            if not port_is_free(port):
                raise StartupError(f"port {port} is in use; set {name} to a free port")
        settings.home.mkdir(parents=True, exist_ok=True)
        with console.status("Starting PostgreSQL…"):
            if settings.database_url is None:
                start_embedded_postgres(settings)
            db = Database(settings)
        console.print(f"[green]✓[/] PostgreSQL  {_describe(db)}")
        self.sink = SmtpSink(settings.maildir, settings.smtp_sink_host, settings.smtp_sink_port)
        self.sink.start()
        console.print(
            f"[green]✓[/] SMTP sink   smtp://{settings.smtp_sink_host}:"
            f"{settings.smtp_sink_port} → {settings.maildir}"
        )
        with console.status("Applying migrations…"):
            revision = migrate.upgrade(db)
        console.print(f"[green]✓[/] Schema      app at revision {revision}")
        env = {
            **os.environ,
            **exported_environment(db),
            "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false",
            # dagster-dbt and the run workers call `dbt` by name: this Python's dbt first.
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        }
        prepare_dagster_home(settings)
        if self.demo:
            self._load_demo(db, env)
        db.dispose()
        logs = settings.logs
        self.children = [
            Child(
                "Dagster",
                [
                    sys.executable,
                    "-m",
                    "dagster",
                    "dev",
                    "-w",
                    str(PROJECT_ROOT / "workspace.yaml"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(settings.dagster_port),
                ],
                logs / "dagster.log",
                lambda: dagster_ready(f"http://127.0.0.1:{settings.dagster_port}"),
            ),
            Child(
                "Dashboards",
                [
                    sys.executable,
                    "-m",
                    "streamlit",
                    "run",
                    str(PROJECT_ROOT / "dashboards" / "app.py"),
                    "--server.address",
                    "127.0.0.1",
                    "--server.port",
                    str(settings.dashboard_port),
                    "--server.headless",
                    "true",
                    "--browser.gatherUsageStats",
                    "false",
                    "--client.toolbarMode",
                    "viewer",
                    # The upload page holds a file in memory; larger ones go to the inbox.
                    "--server.maxUploadSize",
                    str(MAX_DASHBOARD_UPLOAD_MB),
                ],
                logs / "dashboards.log",
                lambda: http_ok(f"http://127.0.0.1:{settings.dashboard_port}/_stcore/health"),
            ),
        ]
        if self._stop.is_set():
            return
        for child in self.children:
            child.start(env, PROJECT_ROOT)
        with console.status("Waiting for the Dagster UI and the dashboards…"):
            self._wait_healthy(timeout=180)

    def _load_demo(self, db: Database, env: Mapping[str, str]) -> None:
        info = demo.load_demo(db, datetime.now(UTC))
        self.console.print(
            f"[green]✓[/] Demo data   tenant '{demo.DEMO_TENANT}', campaign "
            f"'{demo.DEMO_CAMPAIGN}', {info.csv_path.name} in the uploads inbox"
        )
        log = self.settings.logs / "demo-run.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        run = Child(
            "Demo run",
            [
                sys.executable,
                "-m",
                "dagster",
                "asset",
                "materialize",
                "-m",
                "orchestration.definitions",
                "--select",
                "*",
            ],
            log,
            ready=lambda: True,
        )
        run.start(env, PROJECT_ROOT)
        with self.console.status(
            "Running the demo pipeline in Dagster (upload → enroll → send → dbt)…"
        ):
            while run.exited() is None and not self._stop.wait(0.25):
                pass
        if self._stop.is_set():  # Ctrl-C or SIGTERM during the demo run: end it, start nothing
            run.stop(grace=10)
            return
        code = run.exited()
        if code != 0:
            self.console.print(f"[yellow]![/] The demo pipeline run failed; see {log}")
        else:
            self.console.print(
                f"[green]✓[/] Demo run    contacts, enrollments, sent_emails and "
                f"the dbt models are materialized (log: {log})"
            )

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        waiting = list(self.children)
        while waiting and not self._stop.is_set():
            for child in list(waiting):
                code = child.exited()
                if code is not None:
                    raise StartupError(
                        f"{child.name} exited with code {code} while starting; "
                        f"its log ({child.log}) ends with:\n{child.log_tail()}"
                    )
                if child.ready():
                    waiting.remove(child)
            if time.monotonic() > deadline:
                names = ", ".join(c.name for c in waiting)
                raise StartupError(
                    f"{names} did not answer within {timeout:.0f}s; "
                    f"see the logs in {self.settings.logs}"
                )
            self._stop.wait(0.25)

    def _announce(self) -> None:
        s = self.settings
        self.console.print()
        self.console.print(f"  Dagster UI   [bold cyan]http://127.0.0.1:{s.dagster_port}[/]")
        self.console.print(f"  Dashboards   [bold cyan]http://127.0.0.1:{s.dashboard_port}[/]")
        self.console.print(f"  Sent mail    {s.maildir}/new/")
        self.console.print(f"  Logs         {s.logs}/")
        self.console.print("\n  Press Ctrl-C to stop everything.\n")

    def _watch(self) -> int:
        while not self._stop.wait(0.5):
            for child in self.children:
                code = child.exited()
                if code is not None:
                    self.console.print(
                        f"[bold red]{child.name} stopped (exit code {code});"
                        f" stopping everything.[/] Log tail:\n{child.log_tail()}"
                    )
                    return 1
        return 0

    def _shutdown(self) -> None:
        if self.children:
            with self.console.status("Stopping…"):
                threads = [threading.Thread(target=c.stop) for c in self.children]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
        if self.sink is not None:
            self.sink.stop()
            self.sink = None
        if self.settings.database_url is None:
            stop_embedded_postgres(self.settings)
        self.console.print("Stopped.")


def _describe(db: Database) -> str:
    parts = connection_parts(db.owner_url)
    where = parts.host if parts.host.startswith("/") else f"{parts.host}:{parts.port}"
    kind = "external" if db.settings.database_url else "embedded"
    return f"{kind}, {where}, database {parts.dbname}"
