"""mail: 10,000 inbound messages (replies, auto-replies, DSN bounces of several MTAs, ARF
complaints) classified and applied by one poll of the sink's Maildir, beside parsing the same
files with Python's email parser alone, in the same run. Target: <= 3x the bare time
(ratio = poll / bare).

Setup, before the clock starts: an embedded PostgreSQL (pgserver) in a temporary PENGUIN_HOME,
migrated; a tenant with a sender account and `--messages` sent messages (rows as the engine
leaves them); a Maildir holding one inbound message per sent message, addressed to the sender
account as the sink stores it (X-RcptTo): 60% replies, 15% auto-replies, 20% bounces (Postfix
DSN hard and soft, Exim, qmail), 5% ARF complaints, each naming its original.

Poll: `engine.mailboxes.maildir.poll_maildir` over the Maildir, timed from the call to its
return; every message must be applied (one event each) and the run fails otherwise.

Baseline: every file of the same Maildir read and parsed with `email.message_from_bytes`
(policy.default), in the same process, before the poll.
"""

from __future__ import annotations

import argparse
import mailbox
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "engine"))

import sqlalchemy as sa  # noqa: E402
from bench_send import log, set_up  # noqa: E402
from bench_track import _MESSAGES  # noqa: E402

from engine import migrate  # noqa: E402
from engine.config import Settings  # noqa: E402
from engine.db import Database, tenant_transaction  # noqa: E402
from engine.embedded import start_embedded_postgres  # noqa: E402

SENDER = "pat@bench.example"
_SENT = sa.text("select message_id, recipient_email from app.sent_emails order by message_id")
_EVENTS = sa.text("select event_type, count(*) from app.email_events group by event_type")


def inbound(i: int, original: str, recipient: str) -> str:
    import mail_samples as samples  # tests/engine/mail_samples.py: the tests' own messages

    kind = i % 20
    envelope = recipient if kind < 15 else "fbl@isp.example" if kind == 19 else ""
    if kind < 12:
        text = samples.reply(SENDER, recipient, original)
    elif kind < 15:
        text = samples.auto_reply(SENDER, recipient, original, german=kind == 14)
    elif kind < 16:
        text = samples.postfix_dsn(SENDER, recipient, original, hard=True)
    elif kind < 17:
        text = samples.postfix_dsn(SENDER, recipient, original, hard=False)
    elif kind < 18:
        text = samples.exim_bounce(SENDER, recipient, original)
    elif kind < 19:
        text = samples.qmail_bounce(SENDER, recipient, original)
    else:
        text = samples.arf_complaint(SENDER, recipient, original)
    # The sink's headers, as aiosmtpd's Mailbox handler adds them (bounces have a null
    # envelope sender); a unique Message-ID each.
    text = text.replace("Message-ID: <", f"Message-ID: <{i}-", 1)
    head, body = text.split("\n\n", 1)
    sink = f"X-Peer: ('127.0.0.1', 4000)\nX-MailFrom: {envelope}\nX-RcptTo: {SENDER}"
    return f"{head}\n{sink}\n\n{body}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000)
    args = parser.parse_args()
    os.environ["DO_NOT_TRACK"] = "1"
    with tempfile.TemporaryDirectory(prefix="bench-mail-") as tmp:
        work = Path(tmp)
        settings = Settings(home=work / "home", database_url=None)
        owner_url = start_embedded_postgres(settings)
        db = Database(settings, owner_url)
        migrate.upgrade(db)
        now = datetime.now(UTC)
        log(f"setting up {args.messages:,} sent messages and as many inbound ones")
        tenant_id = set_up(db, work, args.messages, now)
        with tenant_transaction(db.app, tenant_id) as conn:
            conn.execute(_MESSAGES, {"sent": now - timedelta(days=1)})
            sent = conn.execute(_SENT).all()
        box = mailbox.Maildir(work / "maildir", create=True)
        for i, (message_id, recipient) in enumerate(sent):
            box.add(inbound(i, message_id, recipient).encode())
        files = sorted((work / "maildir" / "new").iterdir())

        start = time.perf_counter()
        for path in files:
            message_from_bytes(path.read_bytes(), policy=policy.default)
        bare_s = time.perf_counter() - start
        log(f"bare parse: {bare_s:.2f} s")

        from engine.mailboxes.maildir import poll_maildir

        start = time.perf_counter()
        report = poll_maildir(db.app, work / "maildir")
        poll_s = time.perf_counter() - start
        log(f"poll: {poll_s:.2f} s, {report.as_dict()}")
        with tenant_transaction(db.app, tenant_id) as conn:
            events = {t: n for t, n in conn.execute(_EVENTS)}
        log(f"events: {events}")
        if sum(events.values()) != len(files) or report.errors:
            print(f"# FAILED: {len(files)} messages, events {events}, errors {report.errors[:3]}")
            return 1
        print(
            f"BENCH mail seconds={poll_s:.2f} baseline_seconds={bare_s:.2f} "
            f"ratio={poll_s / bare_s:.2f} messages={len(files)} target_ratio=3",
            flush=True,
        )
        db.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
