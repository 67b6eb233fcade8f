"""send: 20,000 due emails through one full engine pass (`send_due`) into the local SMTP sink,
beside a bare aiosmtplib blast of the same rendered messages into the same sink with the same
concurrency, in the same run. Target: >= 0.8 of the bare throughput (ratio = engine / bare).

Setup, before the clock starts: an embedded PostgreSQL (pgserver) in a temporary PENGUIN_HOME,
migrated; a tenant with a sender that has no SMTP host of its own (so: the local sink), a
daily limit above the message count and no minimum gap; a list of `--messages` contacts
(`ingest_file`); a one-email campaign without limits that bind (`create_campaign`,
`launch_campaign`), its enrollments all due. The sink is the project's own
(`engine/smtp_sink.py`: aiosmtpd writing a Maildir), in a separate process, as under
`penguin up`.

Engine: one `send_due` call over the tenant (claim, render, message rows, SMTP, record,
advance), timed from the call to its return; every message must be in the sink's Maildir.

Baseline: the messages the sink received from the engine, read back from its Maildir (the
sink's own X-Peer/X-MailFrom/X-RcptTo headers removed), sent again with bare aiosmtplib: the
engine's concurrency in connections, each reused for its share (MAIL, RCPT, DATA per message),
into a fresh sink process with an empty Maildir, so both write into a directory of the same
size. The engine's concurrency is its Courier's (`--concurrency`, one server: per_server =
concurrency); a scheduler whose `Config` has no `courier` yet sends one message at a time, and
the line says so (engine_concurrency=1).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import mailbox
import os
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from email import policy
from email.parser import BytesParser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402

from engine import migrate  # noqa: E402
from engine.config import Settings  # noqa: E402
from engine.db import Database, tenant_transaction  # noqa: E402
from engine.embedded import start_embedded_postgres  # noqa: E402

TENANT = "bench"
LIST = "send benchmark"

#: The sink's child process: the project's SmtpSink until SIGTERM.
SINK_CHILD = """
import signal, sys
from pathlib import Path
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})  # the sink's thread too
from engine.smtp_sink import SmtpSink
sink = SmtpSink(Path(sys.argv[1]), port=int(sys.argv[2])).start()
print("ready", flush=True)
signal.sigwait({signal.SIGTERM, signal.SIGINT})
sink.stop()
"""

_DUE = sa.text(
    """
    select count(*) from app.campaign_contacts
    where status in ('enrolled', 'active') and next_run_at <= :now
    """
)

#: Headers aiosmtpd's Mailbox handler adds on arrival; not part of what was sent.
SINK_HEADERS = ("X-Peer", "X-MailFrom", "X-RcptTo")


def log(message: str) -> None:
    print(f"# {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_sink(maildir: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", SINK_CHILD, str(maildir), str(port)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        raise SystemExit(f"the SMTP sink did not start on port {port}")
    return proc


def stop_sink(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def write_contacts(path: Path, count: int) -> None:
    with path.open("w", encoding="utf-8") as handle:
        handle.write("email,first_name,last_name,company\n")
        for i in range(count):
            handle.write(f"lead{i}@customers{i % 50}.example,Lead{i},Person{i},Company {i % 97}\n")


def set_up(db: Database, work: Path, messages: int, now: datetime) -> object:
    """The tenant, sender, list and launched campaign; returns the tenant id."""
    from engine.campaigns import Step, create_campaign, launch_campaign
    from engine.enrollment import enroll_active_campaigns
    from engine.ingest import ingest_file
    from engine.senders import create_sender
    from engine.tenants import create_tenant

    tenant_id, _ = create_tenant(db.owner, TENANT)
    path = work / "contacts.csv"
    write_contacts(path, messages)
    ingest_file(db.app, tenant_id, path, LIST, now)
    with tenant_transaction(db.app, tenant_id) as conn:
        sender = create_sender(
            conn, "pat@bench.example", "Pat at Bench", daily_limit=2 * messages, min_gap_seconds=0
        )
        campaign = create_campaign(
            conn,
            "Send benchmark",
            now,
            list_name=LIST,
            sender_id=sender,
            daily_limit=2 * messages,
            steps=[
                Step(
                    "email",
                    name="Hello",
                    subject="A question for {{ company }}, {{ first_name }}",
                    body_text=(
                        "Hi {{ first_name }},\n\nhow does {{ company }} send its email today?\n\n"
                        "Pat\n"
                    ),
                )
            ],
        )
        launch_campaign(conn, campaign, now)
        enroll_active_campaigns(conn, now)  # a no-op where launch or the pass enrolls already
        due = conn.execute(_DUE, {"now": now}).scalar_one()
    if due != messages:
        raise SystemExit(f"expected {messages:,} due enrollments, found {due:,}")
    return tenant_id


def engine_config(concurrency: int) -> tuple[object, int]:
    """The scheduler's Config with the courier at `concurrency` (per_server too: one server),
    and the concurrency the engine will really use."""
    from engine.sending.messenger import CourierConfig
    from engine.sending.scheduler import Config

    if "courier" in {f.name for f in dataclasses.fields(Config)}:
        courier = CourierConfig(concurrency=concurrency, per_server=concurrency)
        return Config(courier=courier), concurrency
    log("the scheduler's Config has no `courier`: it sends one message at a time")
    return Config(), 1


def run_engine(db: Database, tenant_id: object, port: int, concurrency: int) -> tuple[float, int]:
    from engine.senders import SmtpServer
    from engine.sending.scheduler import send_due

    config, used = engine_config(concurrency)
    now = datetime.now(UTC)
    start = time.perf_counter()
    report = send_due(
        db.app, SmtpServer("127.0.0.1", port), now, tenants=[tenant_id], config=config
    )
    seconds = time.perf_counter() - start
    log(f"engine report: {report}")
    return seconds, used


def read_back(maildir: Path) -> list[tuple[str, str, bytes]]:
    """(envelope sender, recipient, message bytes) of every message the sink kept."""
    parser = BytesParser(policy=policy.SMTP)
    messages = []
    for key in mailbox.Maildir(maildir, create=False).iterkeys():
        msg = parser.parsebytes((maildir / "new" / key).read_bytes())
        sender, recipient = str(msg["X-MailFrom"]), str(msg["X-RcptTo"])
        for name in SINK_HEADERS:
            del msg[name]
        messages.append((sender, recipient, msg.as_bytes()))
    return messages


async def blast(messages: list[tuple[str, str, bytes]], port: int, concurrency: int) -> None:
    """Bare aiosmtplib: `concurrency` connections, each taking the next message until none."""
    import aiosmtplib

    pending = iter(messages)

    async def worker() -> None:
        client = aiosmtplib.SMTP(
            hostname="127.0.0.1", port=port, timeout=30, start_tls=False, local_hostname="bench"
        )
        await client.connect()
        for sender, recipient, payload in pending:
            await client.mail(sender)
            await client.rcpt(recipient)
            await client.data(payload)
        await client.quit()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def count(maildir: Path) -> int:
    new = maildir / "new"
    return sum(1 for _ in new.iterdir()) if new.exists() else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=10)
    args = parser.parse_args()
    messages = args.messages

    with tempfile.TemporaryDirectory(prefix="bench-send-") as tmp:
        work = Path(tmp)
        settings = Settings(home=work / "home", database_url=None)
        start_embedded_postgres(settings)  # kept up while this process lives
        db = Database(settings)
        migrate.upgrade(db)

        log(f"setting up {messages:,} due emails")
        tenant_id = set_up(db, work, messages, datetime.now(UTC))

        engine_maildir, port = work / "engine-maildir", free_port()
        sink = start_sink(engine_maildir, port)
        try:
            log("engine: one send_due pass into the sink")
            seconds, concurrency = run_engine(db, tenant_id, port, args.concurrency)
        finally:
            stop_sink(sink)
        arrived = count(engine_maildir)
        if arrived != messages:
            raise SystemExit(f"the engine's pass delivered {arrived:,} of {messages:,} messages")
        log(f"engine: {seconds:.1f}s, {messages / seconds:.0f} messages/s")

        rendered = read_back(engine_maildir)
        baseline_maildir, port = work / "baseline-maildir", free_port()
        sink = start_sink(baseline_maildir, port)
        try:
            log(f"baseline: bare aiosmtplib, {concurrency} connection(s)")
            start = time.perf_counter()
            asyncio.run(blast(rendered, port, concurrency))
            baseline = time.perf_counter() - start
        finally:
            stop_sink(sink)
        if count(baseline_maildir) != messages:
            raise SystemExit("the baseline did not deliver every message")
        log(f"baseline: {baseline:.1f}s, {messages / baseline:.0f} messages/s")
        db.dispose()

    rate, baseline_rate = messages / seconds, messages / baseline
    print(
        f"BENCH send messages_per_second={rate:.0f} "
        f"baseline_messages_per_second={baseline_rate:.0f} ratio={rate / baseline_rate:.2f} "
        f"messages={messages} engine_concurrency={concurrency} seconds={seconds:.2f} "
        f"baseline_seconds={baseline:.2f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
