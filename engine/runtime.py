"""`penguin up`: start every part of the system, print where it is, stop all of it on exit.

Order: PostgreSQL (embedded unless DATABASE_URL), the SMTP sink, migrations, `dbt parse` (once,
here, so no Dagster process parses), then one Dagster code server, `dagster-webserver`,
`dagster-daemon` and Streamlit; with `--demo`, once they answer, the demo tenant and its CSV,
which the upload sensor turns into a run the user can watch. Each child runs in its own
process group; stopping ends the whole group (a code server leaves its run workers behind
when only it is signalled).

Each child gets only the settings and secrets it needs (`child_environment`): nothing of this
process's `PENGUIN_*`, `DATABASE_URL` or libpq `PG*` variables passes through by accident, and
the owner's credentials stay here.
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
from rich.markup import escape

from engine import dbt_manifest, migrate
from engine.config import PROJECT_ROOT, Settings
from engine.db import Database
from engine.embedded import release_embedded_postgres
from engine.smtp_sink import SmtpSink
from engine.tracking.tokens import secret_key

#: The Dagster instance `penguin up` (and `penguin env`) configure. Rewritten on every start,
#: so an upgrade of penguin brings its settings along.
DAGSTER_YAML = """\
# Written by `penguin up` and `penguin env`; rewritten on every start (edits are lost).
# Run, event and schedule storage stay here (SQLite), so the Dagster UI keeps its history.
telemetry:
  enabled: false
# No first-visit newsletter pop-up in the UI.
nux:
  enabled: false
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    # A queued run starts within a second instead of five.
    dequeue_interval_seconds: 1
concurrency:
  # One run at a time per pool: `sends` (the sending engine) and `dbt` (dbt build, which
  # fails with "relation already exists" when two run at once). Assets carry their pool, so
  # this holds for every job and for materializations started by hand. A run waits in the
  # queue until every pool it needs is free.
  pools:
    default_limit: 1
    granularity: run
  runs:
    max_concurrent_runs: 4
    # The same per job, counted by the run queue as it starts runs (a pool limit let two runs
    # queued at once start together on a fresh instance): one dbt build, one send run.
    tag_concurrency_limits:
      - key: penguin/dbt
        limit: 1
      - key: penguin/sends
        limit: 1
sensors:
  # Each sensor is evaluated in its own thread, so a slow tick does not delay the others.
  use_threads: true
  num_workers: 4
"""

#: Dagster's workspace under `penguin up`: one code server, shared by webserver and daemon,
#: instead of one per process (each imports the definitions; one import, one process less).
WORKSPACE_YAML = """\
# Written by `penguin up`: the code server it starts (`dagster code-server start`).
load_from:
  - grpc_server:
      host: 127.0.0.1
      port: {port}
      location_name: penguinmails
"""

#: Variables never passed to a child as they are: each child gets the ones it needs, set
#: explicitly (`child_environment`).
_PRIVATE_PREFIXES = ("PENGUIN_", "PG")
_PRIVATE_NAMES = ("DATABASE_URL",)
#: SMTP passwords of sender accounts (`PENGUIN_SMTP_<TENANT>__<NAME>`): the only variables of
#: that prefix holding `__`. The sink's own settings (`PENGUIN_SMTP_SINK_PORT`) share the prefix
#: and are set explicitly; a tenant may be named `sink` or `sink-eu`, whose passwords must pass.
_SMTP_PASSWORD_PREFIX = "PENGUIN_SMTP_"
_SMTP_PASSWORD_SEPARATOR = "__"
_TELEMETRY_OFF = {"DO_NOT_TRACK": "1", "DAGSTER_DISABLE_TELEMETRY": "1"}


def exported_environment(db: Database) -> dict[str, str]:
    """The variables every process needs to share this database, sink and home."""
    settings = db.settings
    env = {
        "PENGUIN_HOME": str(settings.home),
        "DATABASE_URL": db.owner_url.set(drivername="postgresql").render_as_string(
            hide_password=False
        ),
        **db.server.environment(),
        "PENGUIN_SMTP_SINK_PORT": str(settings.smtp_sink_port),
        "DAGSTER_HOME": str(settings.dagster_home),
        "DO_NOT_TRACK": "1",
        "DAGSTER_DISABLE_TELEMETRY": "1",
    }
    for name, value in (
        ("PENGUIN_APP_PASSWORD", settings.app_password),
        ("PENGUIN_ANALYTICS_PASSWORD", settings.analytics_password),
        ("PENGUIN_DASHBOARDS_PASSWORD", settings.dashboards_password),
        ("PENGUIN_OPERATOR_PASSWORD", settings.operator_password),
    ):
        if value:
            env[name] = value
    return env


def child_environment(
    kind: str, db: Database, parent: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of a child of `penguin up`: `kind` is "dagster", "dashboards",
    "tracking" or "audience" (the demo's).

    Starts from `parent` (default os.environ) minus every `PENGUIN_*`, `DATABASE_URL` and
    libpq `PG*` variable, then adds what that child needs and nothing else:

    * Dagster (webserver, daemon, code server, and so every run): the server's coordinates,
      the application and analytics roles' passwords, the SMTP sink and the sender accounts'
      SMTP passwords (the sending engine reads them), `DAGSTER_HOME`;
    * the dashboards: the server's coordinates and the dashboards role's password, and
      `PENGUIN_HOME` (the upload page drops files into the inbox). No SMTP password, no
      password of a role that can write;
    * the tracking server: the server's coordinates, the application role's password, the
      secret key its links are signed with and its port. No SMTP password, no other role's.
    * the demo audience: `PENGUIN_HOME` (the Maildir it reads, its state), the sink's port (it
      answers by mail), the tracking server's address (the only links it follows) and its
      `PENGUIN_DEMO_PACE`. Nothing of the database at all.

    Dagster and the tracking server get the secret key (`PENGUIN_SECRET_KEY`, read or made
    here, once) and the links' address: send runs sign the links the server verifies. The
    previous keys (`PENGUIN_SECRET_KEY_PREVIOUS`) go to the tracking server only: they verify
    old links and sign nothing.

    Neither ever gets the owner's `DATABASE_URL`: migrations and tenant creation run here.
    """
    parent = os.environ if parent is None else parent
    settings, server = db.settings, db.server
    env = {
        name: value
        for name, value in parent.items()
        if not name.startswith(_PRIVATE_PREFIXES) and name not in _PRIVATE_NAMES
    }
    env.update(_TELEMETRY_OFF)
    env["PENGUIN_HOME"] = str(settings.home)
    if kind == "audience":
        env["PENGUIN_SMTP_SINK_PORT"] = str(settings.smtp_sink_port)
        env["PENGUIN_TRACKING_PORT"] = str(settings.tracking_port)  # the links it follows
        if settings.public_url:
            env["PENGUIN_PUBLIC_URL"] = settings.public_url
        if parent.get("PENGUIN_DEMO_PACE"):
            env["PENGUIN_DEMO_PACE"] = parent["PENGUIN_DEMO_PACE"]
        return env
    env.update(server.environment())
    if kind in ("dagster", "tracking"):
        env.update(
            PENGUIN_SECRET_KEY=secret_key(settings.home, settings.secret_key),
            PENGUIN_TRACKING_PORT=str(settings.tracking_port),
        )
        if settings.public_url:
            env["PENGUIN_PUBLIC_URL"] = settings.public_url
    if kind == "tracking":
        if settings.app_password:
            env["PENGUIN_APP_PASSWORD"] = settings.app_password
        if settings.previous_secret_keys:  # it alone verifies links; the send runs only sign
            env["PENGUIN_SECRET_KEY_PREVIOUS"] = ",".join(settings.previous_secret_keys)
    elif kind == "dagster":
        env.update(
            DAGSTER_HOME=str(settings.dagster_home),
            PENGUIN_SMTP_SINK_PORT=str(settings.smtp_sink_port),
            # dagster-dbt and the run workers call `dbt` by name: this Python's dbt first.
            PATH=os.pathsep.join([str(Path(sys.executable).parent), parent.get("PATH", "")]),
            # The freshness sensor's and the forecasts', checked here (Settings) before
            # Dagster reads them.
            PENGUIN_ANALYTICS_INTERVAL=str(settings.analytics_interval),
            PENGUIN_FORECAST_INTERVAL=str(settings.forecast_interval),
        )
        if settings.authserv_ids:  # the mail polls' (engine.mailboxes.trust)
            env["PENGUIN_AUTHSERV_ID"] = ",".join(settings.authserv_ids)
        for name, value in (
            ("PENGUIN_APP_PASSWORD", settings.app_password),
            ("PENGUIN_ANALYTICS_PASSWORD", settings.analytics_password),
        ):
            if value:
                env[name] = value
        env.update(
            (name, value)
            for name, value in parent.items()
            if name.startswith(_SMTP_PASSWORD_PREFIX) and _SMTP_PASSWORD_SEPARATOR in name
        )
    elif kind == "dashboards":
        env["STREAMLIT_BROWSER_GATHER_USAGE_STATS"] = "false"
        for name, value in (
            ("PENGUIN_DASHBOARDS_PASSWORD", settings.dashboards_password),
            ("PENGUIN_OPERATOR_PASSWORD", settings.operator_password),
        ):
            if value:
                env[name] = value
    else:
        raise ValueError(f"unknown child kind {kind!r}")
    return env


def dashboards_command(port: int) -> list[str]:
    """`streamlit run dashboards/app.py` on 127.0.0.1:`port`. Everything else (headless, upload
    size, toolbar, usage statistics) lives in dashboards/.streamlit/config.toml, which
    `streamlit run` by hand reads too."""
    app = PROJECT_ROOT / "dashboards" / "app.py"
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(app),
        "--server.address",
        "127.0.0.1",
        "--server.port",
        str(port),
    ]


def shell_exports(env: Mapping[str, str]) -> str:
    return "\n".join(f"export {name}={shlex.quote(value)}" for name, value in env.items())


def prepare_dagster_home(settings: Settings) -> None:
    """Write the instance settings (`DAGSTER_YAML`) under `PENGUIN_HOME/dagster/`."""
    settings.dagster_home.mkdir(parents=True, exist_ok=True)
    (settings.dagster_home / "dagster.yaml").write_text(DAGSTER_YAML)


def write_workspace(settings: Settings) -> Path:
    """The workspace file pointing webserver and daemon at the shared code server."""
    path = settings.dagster_home / "workspace.yaml"
    path.write_text(WORKSPACE_YAML.format(port=settings.dagster_code_port))
    return path


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


def _graphql(base_url: str, query: bytes, timeout: float) -> dict | None:
    """The `data` of a query to Dagster's GraphQL API, or None while it does not answer."""
    request = urllib.request.Request(
        f"{base_url}/graphql", data=query, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.load(response)["data"]
    except (urllib.error.URLError, OSError, KeyError, TypeError, ValueError):
        return None


def dagster_ready(base_url: str, timeout: float = 5.0) -> bool:
    """The webserver answers and every code location has loaded (assets are visible).

    A code location that failed to load is a startup error, not something to wait for.
    """
    data = _graphql(base_url, _LOCATIONS, timeout)
    try:
        entries = data["workspaceOrError"]["locationEntries"]  # type: ignore[index]
    except (KeyError, TypeError):
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


_DAEMONS = json.dumps(
    {
        "query": """
{ instance { daemonHealth { allDaemonStatuses { daemonType required healthy } } } }"""
    }
).encode()


def daemon_ready(base_url: str, timeout: float = 5.0) -> bool:
    """Every daemon the instance requires (sensors, run queue, ...) has reported in."""
    data = _graphql(base_url, _DAEMONS, timeout)
    try:
        statuses = data["instance"]["daemonHealth"]["allDaemonStatuses"]  # type: ignore[index]
    except (KeyError, TypeError):
        return False
    return bool(statuses) and all(s["healthy"] for s in statuses if s["required"])


def port_answers(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0


@dataclass
class Child:
    name: str
    args: list[str]
    log: Path
    ready: Callable[[], bool]
    env: Mapping[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None

    def start(self, cwd: Path) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        handle = self.log.open("ab")
        self.process = subprocess.Popen(
            self.args,
            cwd=cwd,
            env=dict(self.env),
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
    db: Database | None = None
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
            ("PENGUIN_DAGSTER_CODE_PORT", settings.dagster_code_port),
            ("PENGUIN_TRACKING_PORT", settings.tracking_port),
        ):
            if not port_is_free(port):
                raise StartupError(f"port {port} is in use; set {name} to a free port")
        settings.home.mkdir(parents=True, exist_ok=True)
        with console.status("Starting PostgreSQL…"):
            db = Database(settings)  # starts the embedded server unless DATABASE_URL is set
        self.db = db
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
        for warning in migrate.stray_schema_warnings(db):
            console.print(f"[yellow]![/] {escape(warning)}")
        dagster_env = child_environment("dagster", db)
        dashboards_env = child_environment("dashboards", db)
        tracking_env = child_environment("tracking", db)
        if dbt_manifest.is_stale():
            log = settings.logs / "dbt-parse.log"
            with console.status("Parsing the dbt project…"):
                parsed = dbt_manifest.parse(dagster_env, log)
            if not parsed:
                raise StartupError(f"`dbt parse` failed; see {log}")
            console.print("[green]✓[/] dbt         project parsed once for every Dagster process")
        prepare_dagster_home(settings)
        workspace = write_workspace(settings)
        logs = settings.logs
        dagster_url = f"http://127.0.0.1:{settings.dagster_port}"
        code_server = Child(
            "Dagster code server",
            [
                sys.executable,
                "-m",
                "dagster",
                "code-server",
                "start",
                "-m",
                "orchestration.definitions",
                "--location-name",
                "penguinmails",
                "-h",
                "127.0.0.1",
                "-p",
                str(settings.dagster_code_port),
            ],
            logs / "dagster-code-server.log",
            lambda: port_answers(settings.dagster_code_port),
            env=dagster_env,
        )
        dashboards = Child(
            "Dashboards",
            dashboards_command(settings.dashboard_port),
            logs / "dashboards.log",
            lambda: http_ok(f"http://127.0.0.1:{settings.dashboard_port}/_stcore/health"),
            env=dashboards_env,
        )
        tracking = Child(
            "Tracking server",
            [sys.executable, "-m", "engine.tracking.server"],
            logs / "tracking.log",
            lambda: http_ok(f"http://127.0.0.1:{settings.tracking_port}/health"),
            env=tracking_env,
        )
        webserver = Child(
            "Dagster UI",
            [
                sys.executable,
                "-m",
                "dagster_webserver",
                "-w",
                str(workspace),
                "-h",
                "127.0.0.1",
                "-p",
                str(settings.dagster_port),
            ],
            logs / "dagster-webserver.log",
            lambda: dagster_ready(dagster_url),
            env=dagster_env,
        )
        daemon = Child(
            "Dagster daemon",
            [sys.executable, "-m", "dagster._daemon", "run", "-w", str(workspace)],
            logs / "dagster-daemon.log",
            lambda: daemon_ready(dagster_url),
            env=dagster_env,
        )
        # The demo's simulated recipients: they serve nothing (they read the Maildir and act).
        audience = Child(
            "Demo audience",
            [sys.executable, "-m", "engine.audience"],
            logs / "demo-audience.log",
            lambda: True,
            env=child_environment("audience", db),
        )
        self.children = [code_server, dashboards, tracking, webserver, daemon]
        self.children += [audience] if self.demo else []
        if self._stop.is_set():
            return
        # The code server first: webserver and daemon load the code location from it.
        code_server.start(PROJECT_ROOT)
        dashboards.start(PROJECT_ROOT)
        tracking.start(PROJECT_ROOT)
        if self.demo:
            audience.start(PROJECT_ROOT)
        with console.status("Waiting for the Dagster code server…"):
            self._wait_healthy([code_server], timeout=180)
        for child in (webserver, daemon):
            if not self._stop.is_set():
                child.start(PROJECT_ROOT)
        with console.status(
            "Waiting for the Dagster UI, its daemon, the dashboards and the tracking server…"
        ):
            self._wait_healthy(self.children, timeout=180)
        if self.demo and not self._stop.is_set():
            self._load_demo(db)

    def _load_demo(self, db: Database) -> None:
        """The demo tenant, sender and campaign, and its CSV dropped into the uploads inbox:
        the upload sensor starts the run that ingests, enrolls, sends and rebuilds the marts,
        while the UIs already answer."""
        from engine import demo
        from engine.senders import SenderConfigError

        try:
            with self.console.status("Loading the demo tenant…"):
                info = demo.load_demo(db, datetime.now(UTC))
        except SenderConfigError as exc:  # its sender's address is another tenant's
            self.console.print(f"[yellow]![/] Demo data   not loaded: {escape(str(exc))}")
            return
        if info.csv_path is None:
            self.console.print(
                f"[green]✓[/] Demo data   tenant '{demo.DEMO_TENANT}' loaded by an earlier "
                "start: left as it is (its CSV is not loaded or sent again)"
            )
            return
        self.console.print(
            f"[green]✓[/] Demo data   tenant '{demo.DEMO_TENANT}', campaign "
            f"'{demo.DEMO_CAMPAIGN}'; {info.csv_path.name} dropped into the uploads inbox"
        )
        self.console.print(
            "  Demo run     the upload sensor starts it within seconds; watch it at "
            f"[bold cyan]http://127.0.0.1:{self.settings.dagster_port}/runs[/]"
        )
        self.console.print(
            "  Audience     simulated recipients open, click, reply, unsubscribe, bounce and "
            f"complain as the mail arrives (log: {self.settings.logs / 'demo-audience.log'})"
        )

    def _wait_healthy(self, children: list[Child], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        waiting = list(children)
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
        self.console.print(
            f"  Tracking     [bold cyan]http://127.0.0.1:{s.tracking_port}[/]"
            f"  (links in messages: {s.tracking_url})"
        )
        self.console.print(f"  Sent mail    {s.maildir}/new/  (one file per message)")
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
        if self.db is not None:
            self.db.dispose()
        if self.settings.database_url is None:
            # Stops the embedded server unless another process holds it or `penguin env`
            # asked to keep it running.
            release_embedded_postgres(self.settings)
        self.console.print("Stopped.")


def _describe(db: Database) -> str:
    parts = db.server
    where = parts.host if parts.host.startswith("/") else f"{parts.host}:{parts.port}"
    kind = "external" if db.settings.database_url else "embedded"
    return f"{kind}, {where}, database {parts.dbname}"
