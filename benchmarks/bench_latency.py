"""latency: seconds from a CSV dropped into the uploads inbox under a running `penguin up`
until (a) the email to every address of it is in the SMTP sink's Maildir and (b) the
dashboards' mart (`analytics_marts.campaign_daily`, read as the dashboards' role reads it)
counts those sends. Target here: <= 30 s.

Setup, before the clock starts: `penguin up` (embedded PostgreSQL, fresh PENGUIN_HOME) is
answering, and a tenant has a sender and an active campaign on the list the file goes to.

Baseline, measured in the same run: the same work done directly in one Python process on the
same database, once `penguin up` has stopped: `engine.ingest.ingest_file`, enrollment,
`send_due` into an SMTP sink, and a `dbt build`. The ratio is what orchestration costs on top
(sensor ticks, run queue, run start-up).
"""

from __future__ import annotations

import argparse
import mailbox
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402

from engine.config import Settings  # noqa: E402
from engine.db import Database, tenant_transaction  # noqa: E402
from engine.runtime import exported_environment  # noqa: E402

BIN = Path(sys.executable).parent
LIST = "leads"
CAMPAIGN = "Latency"

_SENT = sa.text(
    """
    select coalesce(sum(sent), 0) from analytics_marts.campaign_daily
    where tenant_name = :tenant and campaign_name = :campaign
    """
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def setup_tenant(db: Database, tenant: str) -> None:
    """A tenant with a sender (the local sink) and an active one-email campaign on LIST."""
    from engine.campaigns import Step, create_campaign, launch_campaign
    from engine.senders import create_sender
    from engine.tenants import create_tenant

    now = datetime.now(UTC)
    tenant_id, _ = create_tenant(db.owner, tenant)
    with tenant_transaction(db.app, tenant_id) as conn:
        sender = create_sender(
            conn, f"pat@{tenant}.example", "Pat", daily_limit=100_000, min_gap_seconds=0
        )
        campaign = create_campaign(
            conn,
            CAMPAIGN,
            now,
            list_name=LIST,
            sender_id=sender,
            steps=[Step("email", name="Hi", subject="Hi {{ first_name }}", body_text="Hello.")],
        )
        launch_campaign(conn, campaign, now)


def write_csv(path: Path, tenant: str, rows: int) -> set[str]:
    addresses = {f"lead{i}@{tenant}-customers.example" for i in range(rows)}
    path.write_text("email,first_name\n" + "".join(f"{a},Lead\n" for a in sorted(addresses)))
    return addresses


def mailed(maildir: Path, addresses: set[str]) -> bool:
    if not (maildir / "new").exists():
        return False
    seen = {str(m["To"]).rsplit("<", 1)[-1].rstrip(">") for m in mailbox.Maildir(maildir)}
    return addresses <= seen


def mart_count(db: Database, tenant: str) -> int:
    try:
        with db.dashboards.connect() as conn:
            return int(conn.execute(_SENT, {"tenant": tenant, "campaign": CAMPAIGN}).scalar_one())
    except sa.exc.ProgrammingError:  # the mart is not built yet
        return 0


def start_penguin_up(
    home: Path, *args: str, extra: dict[str, str] | None = None
) -> tuple[subprocess.Popen, list[str]]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PENGUIN_") and k not in ("DATABASE_URL", "DAGSTER_HOME")
    }
    env.update(
        PENGUIN_HOME=str(home),
        PENGUIN_DAGSTER_PORT=str(free_port()),
        PENGUIN_DASHBOARD_PORT=str(free_port()),
        PENGUIN_SMTP_SINK_PORT=str(free_port()),
        PENGUIN_DAGSTER_CODE_PORT=str(free_port()),
        PENGUIN_TRACKING_PORT=str(free_port()),
        PYTHONPATH=str(ROOT),
        DO_NOT_TRACK="1",
        COLUMNS="200",
    )
    env.update(extra or {})
    proc = subprocess.Popen(
        [sys.executable, "-c", "from engine.cli import main; main()", "up", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    deadline = time.monotonic() + 300
    while not any("Press Ctrl-C" in line for line in lines):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("penguin up did not start:\n" + "".join(lines))
        time.sleep(0.2)
    return proc, lines


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def time_under_penguin_up(home: Path, db: Database, rows: int, timeout: float) -> float:
    from engine import inbox

    tenant = "latency"
    setup_tenant(db, tenant)
    addresses = write_csv(home / "latency.csv", tenant, rows)
    start = time.perf_counter()
    inbox.drop(db.settings.uploads, home / "latency.csv", tenant, LIST)
    mail_at = mart_at = None
    while mail_at is None or mart_at is None:
        elapsed = time.perf_counter() - start
        if elapsed > timeout:
            raise TimeoutError(
                f"after {elapsed:.0f}s: mail {'in' if mail_at else 'not in'} the sink, mart "
                f"{'updated' if mart_at else 'not updated'} (logs: {db.settings.logs})"
            )
        if mail_at is None and mailed(db.settings.maildir, addresses):
            mail_at = elapsed
            print(f"# mail in the sink after {mail_at:.1f}s", file=sys.stderr, flush=True)
        if mart_at is None and mart_count(db, tenant) >= rows:
            mart_at = elapsed
            print(f"# mart updated after {mart_at:.1f}s", file=sys.stderr, flush=True)
        time.sleep(0.2)
    return max(mail_at, mart_at)


def time_in_one_process(home: Path, db: Database, rows: int) -> float:
    """The same steps, called directly: ingest, enroll, send, dbt build."""
    from engine.enrollment import enroll_active_campaigns
    from engine.ingest import ingest_file
    from engine.senders import SmtpServer
    from engine.sending.scheduler import send_due
    from engine.smtp_sink import SmtpSink
    from engine.tenants import tenant_id

    tenant = "baseline"
    setup_tenant(db, tenant)
    path = home / "baseline.csv"
    addresses = write_csv(path, tenant, rows)
    maildir = home / "baseline-maildir"
    port = free_port()
    dbt_env = {**os.environ, **exported_environment(db)}
    dbt_env.pop("DATABASE_URL")
    with SmtpSink(maildir, port=port):
        start = time.perf_counter()
        tid = tenant_id(db.app, tenant)
        ingest_file(db.app, tid, path, LIST, datetime.now(UTC))
        with tenant_transaction(db.app, tid) as conn:
            enroll_active_campaigns(conn, datetime.now(UTC))
        send_due(db.app, SmtpServer("127.0.0.1", port), datetime.now(UTC), tenants=[tid])
        subprocess.run(
            [str(BIN / "dbt"), "build", "--quiet", "--profiles-dir", ".", "--project-dir", "."],
            cwd=ROOT / "dbt_project",
            env=dbt_env,
            check=True,
        )
        seconds = time.perf_counter() - start
    assert mailed(maildir, addresses), "the baseline's mail did not arrive"
    assert mart_count(db, tenant) >= rows, "the baseline's sends are not in the mart"
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=40, help="addresses in the dropped CSV")
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        proc, lines = start_penguin_up(home)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # Attaches to penguin up's embedded server, as its owner (this process is the
            # operator setting up a tenant); holding it keeps it up for the baseline.
            db = Database(Settings.from_env({"PENGUIN_HOME": str(home)}))
        try:
            seconds = time_under_penguin_up(home, db, args.rows, args.timeout)
        finally:
            stop(proc)
        baseline = time_in_one_process(home, db, args.rows)
        db.dispose()
        from engine.embedded import stop_embedded_postgres

        stop_embedded_postgres(db.settings)
    print(
        f"BENCH latency seconds={seconds:.2f} baseline_seconds={baseline:.2f} "
        f"ratio={seconds / baseline:.2f}"
    )


if __name__ == "__main__":
    main()
