"""startup: seconds from `penguin up` until the Dagster UI (code location loaded) and the
dashboards both answer HTTP. Target here: <= 30 s.

Baseline, measured in the same run: `dagster dev` and `streamlit run` started bare, side by
side, on the same workspace and app, until they answer the same way. The ratio is what the
rest of `penguin up` (embedded PostgreSQL, SMTP sink, migrations, supervision) costs on top.
Each figure is the median of --repeat runs (default 3), on a fresh PENGUIN_HOME each time.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.runtime import dagster_ready, http_ok  # noqa: E402

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    """A quiet child in its own process group, so stopping it ends everything it started."""
    return subprocess.Popen(
        args,
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def wait_ready(dagster_port: int, dashboard_port: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    dagster = dashboards = False
    while time.monotonic() < deadline:
        dagster = dagster or dagster_ready(f"http://127.0.0.1:{dagster_port}")
        dashboards = dashboards or http_ok(f"http://127.0.0.1:{dashboard_port}/_stcore/health")
        if dagster and dashboards:
            return
        time.sleep(0.1)
    raise TimeoutError("did not become ready")


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT if proc.args[1] == "up" else signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def time_penguin_up(home: Path) -> float:
    home.mkdir(parents=True)
    dagster_port, dashboard_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DAGSTER_HOME")}
    env.update(
        PENGUIN_HOME=str(home),
        PENGUIN_DAGSTER_PORT=str(dagster_port),
        PENGUIN_DASHBOARD_PORT=str(dashboard_port),
        PENGUIN_SMTP_SINK_PORT=str(free_port()),
        PENGUIN_DAGSTER_CODE_PORT=str(free_port()),
        PENGUIN_TRACKING_PORT=str(free_port()),
        DO_NOT_TRACK="1",
    )
    start = time.perf_counter()
    proc = spawn([str(BIN / "penguin"), "up"], env)
    try:
        wait_ready(dagster_port, dashboard_port)
        return time.perf_counter() - start
    finally:
        stop([proc])


def time_bare_tools(home: Path) -> float:
    dagster_port, dashboard_port = free_port(), free_port()
    (home / "dagster").mkdir(parents=True)
    (home / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home / "dagster"),
        "DO_NOT_TRACK": "1",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    start = time.perf_counter()
    procs = [
        spawn(
            [
                sys.executable,
                "-m",
                "dagster",
                "dev",
                "-w",
                str(ROOT / "workspace.yaml"),
                "-h",
                "127.0.0.1",
                "-p",
                str(dagster_port),
            ],
            env,
        ),
        spawn(
            [
                sys.executable,
                "-m",
                "streamlit",
                "run",
                str(ROOT / "dashboards" / "app.py"),
                "--server.headless",
                "true",
                "--server.address",
                "127.0.0.1",
                "--server.port",
                str(dashboard_port),
                "--browser.gatherUsageStats",
                "false",
            ],
            env,
        ),
    ]
    try:
        wait_ready(dagster_port, dashboard_port)
        return time.perf_counter() - start
    finally:
        stop(procs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    ours, bare = [], []
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            ours.append(time_penguin_up(Path(tmp) / "home"))
        with tempfile.TemporaryDirectory() as tmp:
            bare.append(time_bare_tools(Path(tmp)))
        print(
            f"# run {i + 1}: penguin up {ours[-1]:.2f}s, bare tools {bare[-1]:.2f}s",
            file=sys.stderr,
            flush=True,
        )
    seconds, baseline = statistics.median(ours), statistics.median(bare)
    print(
        f"BENCH startup seconds={seconds:.2f} baseline_seconds={baseline:.2f} "
        f"ratio={seconds / baseline:.2f}"
    )


if __name__ == "__main__":
    main()
