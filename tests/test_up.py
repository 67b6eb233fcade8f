"""`penguin up --demo` as a user runs it: everything answers, Ctrl-C leaves no process."""

from __future__ import annotations

import json
import os
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


def _start_up(home: Path, *args: str) -> tuple[subprocess.Popen, int, int]:
    """`penguin up` on free ports with its own PENGUIN_HOME and embedded PostgreSQL."""
    dagster_port, dashboard_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DAGSTER_HOME")}
    env.update(
        PENGUIN_HOME=str(home),
        PENGUIN_DAGSTER_PORT=str(dagster_port),
        PENGUIN_DASHBOARD_PORT=str(dashboard_port),
        PENGUIN_SMTP_SINK_PORT=str(free_port()),
        COLUMNS="200",
    )
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


def test_up_demo_serves_everything_and_ctrl_c_stops_it_all(tmp_path):
    home = tmp_path / "home"
    proc, dagster_port, dashboard_port = _start_up(home, "--demo")
    output = []
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            output.append(line)
            if "Press Ctrl-C" in line:
                break
        text = "".join(output)
        assert "Press Ctrl-C" in text, text
        assert f"http://127.0.0.1:{dagster_port}" in text
        assert f"http://127.0.0.1:{dashboard_port}" in text

        # A message sits in the sink's Maildir.
        assert len(list((home / "maildir" / "new").iterdir())) == 40
        # The Dagster UI shows the assets, materialized by the demo run.
        nodes = _graphql(dagster_port, "{ assetNodes { assetKey { path } } }")["assetNodes"]
        keys = {"/".join(n["assetKey"]["path"]) for n in nodes}
        assert {"contacts", "enrollments", "sent_emails", "analytics/campaign_daily"} <= keys
        runs = _graphql(dagster_port, "{ runsOrError { ... on Runs { results { status } } } }")
        assert [r["status"] for r in runs["runsOrError"]["results"]] == ["SUCCESS"]
        # The dashboards answer.
        health = f"http://127.0.0.1:{dashboard_port}/_stcore/health"
        with urllib.request.urlopen(health, timeout=10) as response:
            assert response.status == 200
        # State survives under PENGUIN_HOME.
        assert (home / "dagster" / "dagster.yaml").exists()
        assert (home / "pgdata" / "PG_VERSION").exists()
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(120)
        rest = proc.stdout.read()
    assert code == 0, "".join(output) + rest
    assert "Stopped." in rest
    time.sleep(1)
    assert _processes_of(home) == []


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


def test_stopping_during_the_demo_run_starts_nothing_and_leaves_nothing(tmp_path):
    home = tmp_path / "home"
    proc, _, _ = _start_up(home, "--demo")
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if "Demo data" in line:
                break
        time.sleep(2)  # the demo run is under way
        assert _processes_of(home)
    finally:
        proc.send_signal(signal.SIGHUP)  # as when the terminal is closed
        code = proc.wait(60)
    rest = proc.stdout.read()
    assert code == 0, "".join(seen) + rest
    assert "Dagster UI" not in rest
    time.sleep(1)
    assert _processes_of(home) == []
