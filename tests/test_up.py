"""`penguin up --demo` as a user runs it: everything answers, the demo runs in Dagster while
the UIs answer, each child holds only its own secrets, Ctrl-C leaves no process."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

from engine.config import PROJECT_ROOT
from tests.conftest import free_port

PENGUIN = str(Path(sys.executable).with_name("penguin"))


def _processes_of(home: Path) -> list[str]:
    """Processes started for this PENGUIN_HOME: by environment, or naming it (postgres)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            mentions = str(home) in " ".join(proc.info["cmdline"] or [])
            inherited = proc.environ().get("PENGUIN_HOME") == str(home)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if (mentions or inherited) and proc.pid != os.getpid():
            found.append(f"{proc.pid} {' '.join(proc.info['cmdline'] or [])[:120]}")
    return found


def _graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)["data"]


#: Secrets given to `penguin up`, each of which only some children may hold.
SECRETS = {
    "PENGUIN_SMTP_DEMO__X": "smtp-secret-4f1c",
    "PENGUIN_DASHBOARDS_PASSWORD": "dashboards-secret-9b2e",
    "PENGUIN_OPERATOR_PASSWORD": "operator-secret-5d61",
    "PENGUIN_APP_PASSWORD": "app-secret-77d0",
    "PENGUIN_ANALYTICS_PASSWORD": "analytics-secret-1a5e",
    "PGPASSWORD": "libpq-secret-c3a8",
}


def _start_up(
    home: Path, *args: str, extra: dict[str, str] | None = None
) -> tuple[subprocess.Popen, int, int]:
    """`penguin up` on free ports with its own PENGUIN_HOME and embedded PostgreSQL (the
    tracking server's port: `extra`'s PENGUIN_TRACKING_PORT, else a free one)."""
    dagster_port, dashboard_port = free_port(), free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "DAGSTER_HOME") and not k.startswith("PENGUIN_")
    }
    env.update(
        PENGUIN_HOME=str(home),
        PENGUIN_DAGSTER_PORT=str(dagster_port),
        PENGUIN_DASHBOARD_PORT=str(dashboard_port),
        PENGUIN_SMTP_SINK_PORT=str(free_port()),
        PENGUIN_DAGSTER_CODE_PORT=str(free_port()),
        COLUMNS="200",
    )
    env.update({"PENGUIN_TRACKING_PORT": str(free_port()), **(extra or {})})
    home.mkdir(parents=True)
    proc = subprocess.Popen(
        [PENGUIN, "up", *args],
        env=env,
        cwd=home,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    return proc, dagster_port, dashboard_port


def _read_until_ready(proc: subprocess.Popen, output: list[str], timeout: float = 400) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        output.append(line)
        if "Press Ctrl-C" in line:
            break
    return "".join(output)


_RUNS = "{ runsOrError { ... on Runs { results { runId jobName status startTime endTime } } } }"


def _runs(port: int) -> list[dict]:
    return _graphql(port, _RUNS)["runsOrError"]["results"]


def _wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _environments(home: Path) -> dict[str, list[dict[str, str]]]:
    """The environments of this PENGUIN_HOME's child processes, by kind."""
    found: dict[str, list[dict[str, str]]] = {
        "dagster": [],
        "dashboards": [],
        "tracking": [],
        "audience": [],
    }
    for proc in psutil.process_iter(["cmdline"]):
        try:
            environ = proc.environ()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        command = " ".join(proc.info["cmdline"] or [])
        if environ.get("PENGUIN_HOME") != str(home) or "penguin up" in command:
            continue
        if "streamlit" in command:
            found["dashboards"].append(environ)
        elif "engine.tracking.server" in command:
            found["tracking"].append(environ)
        elif "engine.audience" in command:
            found["audience"].append(environ)
        elif "dagster" in command:
            found["dagster"].append(environ)
    return found


def _one_click_unsubscribe(message_file: Path) -> int:
    """RFC 8058's POST to the message's List-Unsubscribe link; the answer's status."""
    from email import message_from_bytes, policy

    message = message_from_bytes(message_file.read_bytes(), policy=policy.default)
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    link = message["List-Unsubscribe"].split(",")[0].strip().strip("<>")
    request = urllib.request.Request(link, data=b"List-Unsubscribe=One-Click", method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status


def _outgoing(maildir: Path) -> list[Path]:
    """The engine's messages in the sink (not the audience's answers to them)."""
    return [p for p in sorted(maildir.iterdir()) if b"List-Unsubscribe-Post" in p.read_bytes()]


def _audience_did(home: Path, kinds: set[str]) -> set[str]:
    """What the demo audience has done so far, once it has done all of `kinds`."""
    try:
        done = json.loads((home / "demo" / "audience.json").read_text())["done"]
    except (OSError, ValueError):
        return set()
    seen = {kind for actions in done.values() for kind in actions}
    return seen if kinds <= seen else set()


def test_up_demo_serves_everything_and_ctrl_c_stops_it_all(tmp_path):
    home = tmp_path / "home"
    tracking_port = free_port()
    # The demo audience at 1/20 of its pace: its people open within seconds, not minutes.
    # The freshness sensor every 5 s (default 30).
    extra = {
        **SECRETS,
        "PENGUIN_TRACKING_PORT": str(tracking_port),
        "PENGUIN_DEMO_PACE": "0.05",
        "PENGUIN_ANALYTICS_INTERVAL": "5",
    }
    proc, dagster_port, dashboard_port = _start_up(home, "--demo", extra=extra)
    output: list[str] = []
    try:
        text = _read_until_ready(proc, output)
        assert "Press Ctrl-C" in text, text
        assert f"http://127.0.0.1:{dagster_port}" in text
        assert f"http://127.0.0.1:{dashboard_port}" in text
        # The UIs answer before the demo has run: its run is something to watch.
        assert f"watch it at http://127.0.0.1:{dagster_port}/runs" in text
        health = f"http://127.0.0.1:{dashboard_port}/_stcore/health"
        with urllib.request.urlopen(health, timeout=10) as response:
            assert response.status == 200
        assert f"http://127.0.0.1:{tracking_port}" in text
        with urllib.request.urlopen(f"http://127.0.0.1:{tracking_port}/health") as response:
            assert json.load(response)["status"] == "ok"

        # The upload sensor starts the demo run; its messages land in the sink's Maildir.
        maildir = home / "maildir" / "new"
        outgoing = _wait_for(
            lambda: maildir.exists() and len(found := _outgoing(maildir)) == 40 and found,
            180,
            "40 messages in the Maildir",
        )
        # Every run but the refreshes (checked below) ends, and ends well (a send run the
        # due-sends sensor asked for while the upload run was sending may follow it; it finds
        # nothing left to send).
        runs = _wait_for(
            lambda: (
                (r := [x for x in _runs(dagster_port) if x["jobName"] != "analytics_job"])
                and all(x["status"] in ("SUCCESS", "FAILURE", "CANCELED") for x in r)
                and r
            ),
            180,
            "the demo's runs to finish",
        )
        assert [r["status"] for r in runs] == ["SUCCESS"] * len(runs), runs
        assert "ingest_upload_job" in {r["jobName"] for r in runs}
        # The Dagster UI shows the assets, materialized by the demo run (the marts too: it
        # refreshes them).
        wanted = {"contacts", "enrollments", "sent_emails", "analytics/campaign_daily"}
        _wait_for(lambda: wanted <= _materialized(dagster_port), 180, "the marts refreshed")
        # A demo message's one-click unsubscribe link reaches the tracking server, signed by
        # the send run with the key the server verifies.
        assert _one_click_unsubscribe(outgoing[0]) == 200
        # The demo audience opens through the tracking server, as people and as privacy
        # proxies (the demo's scripted recipients do both, whatever the rates draw).
        _wait_for(lambda: _audience_did(home, {"open", "machine_open"}), 120, "opens")
        log = (home / "logs" / "demo-audience.log").read_text()
        assert re.search(r" open \S+@customers\.example: HTTP 200", log), log

        # Each child holds only what it needs.
        environments = _environments(home)
        assert all(environments.values()), {k: len(v) for k, v in environments.items()}
        key = environments["tracking"][0]["PENGUIN_SECRET_KEY"]
        assert len(key) >= 32
        for env in environments["dagster"]:
            assert env["PENGUIN_SMTP_DEMO__X"] == SECRETS["PENGUIN_SMTP_DEMO__X"]
            assert env["PENGUIN_APP_PASSWORD"] == SECRETS["PENGUIN_APP_PASSWORD"]
            assert env["PENGUIN_ANALYTICS_PASSWORD"] == SECRETS["PENGUIN_ANALYTICS_PASSWORD"]
            assert {"PENGUIN_PG_HOST", "DAGSTER_HOME", "PENGUIN_SMTP_SINK_PORT"} <= set(env)
            assert env["DAGSTER_DISABLE_TELEMETRY"] == "1"
            for name in (
                "DATABASE_URL",
                "PENGUIN_DASHBOARDS_PASSWORD",
                "PENGUIN_OPERATOR_PASSWORD",
                "PGPASSWORD",
            ):
                assert name not in env
            assert env["PENGUIN_SECRET_KEY"] == key
        for env in environments["tracking"]:
            assert env["PENGUIN_APP_PASSWORD"] == SECRETS["PENGUIN_APP_PASSWORD"]
            assert env["PENGUIN_TRACKING_PORT"] == str(tracking_port)
            leaked = {
                "DATABASE_URL",
                "PENGUIN_SMTP_DEMO__X",
                "PENGUIN_ANALYTICS_PASSWORD",
                "PENGUIN_DASHBOARDS_PASSWORD",
                "PENGUIN_OPERATOR_PASSWORD",
                "PGPASSWORD",
            } & set(env)
            assert not leaked
        for env in environments["audience"]:  # no database, no secret: the Maildir and SMTP
            assert env["PENGUIN_DEMO_PACE"] == "0.05"
            assert not {k for k in env if k.startswith(("PENGUIN_PG", "PG", "DATABASE"))}
            assert not {k for k in env if "PASSWORD" in k or k == "PENGUIN_SECRET_KEY"}
        for env in environments["dashboards"]:
            assert env["PENGUIN_DASHBOARDS_PASSWORD"] == SECRETS["PENGUIN_DASHBOARDS_PASSWORD"]
            assert env["PENGUIN_OPERATOR_PASSWORD"] == SECRETS["PENGUIN_OPERATOR_PASSWORD"]
            assert {"PENGUIN_PG_HOST", "PENGUIN_PG_PORT", "PENGUIN_PG_DATABASE"} <= set(env)
            leaked = {
                "DATABASE_URL",
                "PENGUIN_SMTP_DEMO__X",
                "PENGUIN_APP_PASSWORD",
                "PENGUIN_ANALYTICS_PASSWORD",
                "PENGUIN_SECRET_KEY",
                "PGPASSWORD",
            } & set(env)
            assert not leaked

        # The freshness sensor's refreshes follow the sends and the audience's opens (waited
        # for last: it runs while the checks above do).
        runs = _wait_for(
            lambda: (
                (r := _runs(dagster_port))
                and any(x["jobName"] == "analytics_job" and x["endTime"] for x in r)
                and r
            ),
            240,
            "a refresh to finish",
        )
        refreshes = [r for r in runs if r["jobName"] == "analytics_job" and r["endTime"]]
        assert {r["status"] for r in refreshes} == {"SUCCESS"}, refreshes
        # Two dbt builds at once fail ("relation already exists"): the run queue starts the
        # runs that build marts (the upload run, the refreshes the sensor asks for while it
        # sends) one at a time.
        builds = sorted(
            (r["startTime"], r["endTime"] or float("inf"))
            for r in runs
            if r["jobName"] in ("ingest_upload_job", "analytics_job") and r["startTime"]
        )
        assert len(builds) >= 2
        for (_, ended), (started, _) in zip(builds, builds[1:], strict=False):
            assert started >= ended, builds
        # State survives under PENGUIN_HOME; the instance has no first-visit pop-up.
        dagster_yaml = (home / "dagster" / "dagster.yaml").read_text()
        assert "nux:\n  enabled: false" in dagster_yaml
        assert (home / "pgdata" / "PG_VERSION").exists()
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(120)
        rest = proc.stdout.read()
    assert code == 0, "".join(output) + rest
    assert "Stopped." in rest
    time.sleep(1)
    assert _processes_of(home) == []
    # No secret is printed, to the terminal or into any log penguin up writes.
    printed = "".join(output) + rest
    logs = {path: path.read_text(errors="replace") for path in (home / "logs").rglob("*.log")}
    assert logs
    for secret in [*SECRETS.values(), key]:  # the signing key too
        assert secret not in printed
        assert not [path for path, text in logs.items() if secret in text]


def _materialized(dagster_port: int) -> set[str]:
    nodes = _graphql(
        dagster_port,
        "{ assetNodes { assetKey { path } assetMaterializations(limit: 1) { runId } } }",
    )["assetNodes"]
    return {"/".join(n["assetKey"]["path"]) for n in nodes if n["assetMaterializations"]}


def test_up_refuses_a_port_in_use_and_says_which_variable(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {
            **os.environ,
            "PENGUIN_HOME": str(tmp_path / "home"),
            "PENGUIN_DAGSTER_PORT": str(port),
            "COLUMNS": "200",
        }
        env.pop("DATABASE_URL", None)
        result = subprocess.run(
            [PENGUIN, "up"], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120
        )
    assert result.returncode == 1
    assert f"port {port} is in use; set PENGUIN_DAGSTER_PORT to a free port" in result.stdout
    assert _processes_of(tmp_path / "home") == []


def test_sigterm_stops_everything_too(tmp_path):
    home = tmp_path / "home"
    proc, _, _ = _start_up(home)
    try:
        for line in proc.stdout:
            if "Press Ctrl-C" in line:
                break
        assert _processes_of(home)  # the check below could not fail on nothing started
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(120)
    assert code == 0
    time.sleep(1)
    assert _processes_of(home) == []


def test_stopping_while_starting_starts_nothing_more_and_leaves_nothing(tmp_path):
    home = tmp_path / "home"
    proc, _, _ = _start_up(home, "--demo")
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if "Schema" in line:
                break
        time.sleep(2)  # the Dagster processes are starting
        assert _processes_of(home)
    finally:
        proc.send_signal(signal.SIGHUP)  # as when the terminal is closed
        code = proc.wait(60)
    rest = proc.stdout.read()
    assert code == 0, "".join(seen) + rest
    assert "Dagster UI" not in rest and "Demo data" not in rest
    time.sleep(1)
    assert _processes_of(home) == []
