"""Engine passes as real operating-system processes: two at once on one campaign, and one
killed with SIGKILL in the middle of its SMTP conversations."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa

from engine.db import tenant_transaction
from engine.sending.messenger import CourierConfig
from engine.sending.scheduler import Config, send_due
from tests.factories import people, seed_tenant

ROOT = Path(__file__).resolve().parents[2]

#: One engine pass in its own process: waits for the file `go` to exist (so that several start
#: together), runs `send_due` at `now` into the SMTP server at host:port, prints its report.
PASS = """
import json, sys, time
from datetime import datetime
from pathlib import Path
from engine.config import Settings
from engine.db import Database
from engine.senders import SmtpServer
from engine.sending.messenger import CourierConfig
from engine.sending.scheduler import Config, send_due

go, host, port, now, batch, concurrency = sys.argv[1:]
database = Database(Settings.from_env())
courier = CourierConfig(concurrency=int(concurrency), per_server=int(concurrency))
config = Config(batch_size=int(batch), courier=courier)
print("ready", flush=True)
while not Path(go).exists():
    time.sleep(0.005)
report = send_due(
    database.app, SmtpServer(host, int(port)), datetime.fromisoformat(now), config=config
)
print(json.dumps(report.as_dict()), flush=True)
"""


def _start_pass(database, server, now, go: Path, *, batch: int, concurrency: int):
    env = {
        **os.environ,
        "DATABASE_URL": database.settings.database_url,
        "PENGUIN_HOME": str(database.settings.home),
        "PYTHONPATH": str(ROOT),
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            PASS,
            str(go),
            server.host,
            str(server.port),
            now.isoformat(),
            str(batch),
            str(concurrency),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready", process.stderr.read()
    return process


def _report(process) -> dict:
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


#: Enrollments a worker holds at `at`.
_HELD = sa.text("select count(*) from app.campaign_contacts where lease_expires_at > :at")


def _messages(database, tenant) -> list[sa.Row]:
    with tenant_transaction(database.app, tenant.tenant_id) as conn:
        return conn.execute(
            sa.text("select recipient_email, status from app.sent_emails order by 1")
        ).all()


def test_two_engine_processes_at_once_on_one_campaign_send_each_message_once(
    database, smtp_faults, now, tmp_path
):
    tenant = seed_tenant(database, "acme", now, tmp_path, rows=people("lead", 120))
    server = smtp_faults.start(data_delay=0.01)
    go = tmp_path / "go"
    # Small batches and a slow DATA keep both claiming while the other sends.
    passes = [_start_pass(database, server.smtp, now, go, batch=7, concurrency=3) for _ in range(2)]
    go.touch()
    reports = [_report(p) for p in passes]

    received = Counter(r for a in server.arrivals for r in a.rcpt_tos)
    assert len(received) == 120 and set(received.values()) == {1}
    assert sum(r["sent"] for r in reports) == 120
    assert all(r["sent"] > 0 for r in reports), reports  # both did some of the work
    messages = _messages(database, tenant)
    assert len(messages) == 120 and {m.status for m in messages} == {"sent"}


def test_a_pass_killed_mid_conversation_leaves_at_most_its_concurrency_in_doubt(
    database, smtp_faults, now, tmp_path
):
    tenant = seed_tenant(database, "acme", now, tmp_path, rows=people("lead", 60))
    server = smtp_faults.start(data_delay=0.2)
    go = tmp_path / "go"
    process = _start_pass(database, server.smtp, now, go, batch=20, concurrency=3)
    go.touch()
    deadline = time.monotonic() + 60
    while len(server.arrivals) < 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL
    time.sleep(0.5)  # conversations the server was still reading end with the lost connection

    in_doubt = [m for m in _messages(database, tenant) if m.status == "sending"]
    assert 1 <= len(in_doubt) <= 3

    # Before the dead worker's lease runs out, a pass sends only what it had not claimed (its
    # first batch of 20 was under way); after it, the conversations it left become `unknown`,
    # never sent again, and the rest of its claim goes.
    with tenant_transaction(database.app, tenant.tenant_id) as conn:
        held = conn.execute(_HELD, {"at": now + timedelta(minutes=1)}).scalar_one()
    assert held == 20
    config = Config(courier=CourierConfig(concurrency=3, per_server=3))
    early = send_due(database.app, server.smtp, now + timedelta(minutes=1), config=config)
    assert (early.sent, early.unknown) == (60 - held, 0)
    later = send_due(database.app, server.smtp, now + timedelta(minutes=6), config=config)
    assert later.unknown == len(in_doubt)

    messages = _messages(database, tenant)
    statuses = Counter(m.status for m in messages)
    assert statuses == {"sent": 60 - len(in_doubt), "unknown": len(in_doubt)}
    received = Counter(r for a in server.arrivals for r in a.rcpt_tos)
    assert set(received.values()) == {1}  # nobody got a message twice
    sent = {m.recipient_email for m in messages if m.status == "sent"}
    doubtful = {m.recipient_email for m in in_doubt}
    assert sent <= set(received) <= sent | doubtful
