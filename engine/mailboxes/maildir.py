"""The local sink's Maildir as the sender accounts' mailbox (the embedded default).

The sink keeps everything it receives in one Maildir: the engine's own messages to contacts,
and whatever is addressed to a sender account (replies, bounces, complaints, as the demo
audience or a test sends them). A message is inbound when one of its envelope recipients (the
sink's `X-RcptTo`, the last one: a sender can write its own above it, never below) is a sender
account's address; it belongs to that account's tenant, the only one that has the address
(migration 0019; an account that lost its address to an earlier one reads nothing). The
engine's own copies are skipped: their recipients are contacts. What each message is trusted
for: `engine.mailboxes.trust`.

Reading is incremental. The cursor is the arrival second of the newest file read (Maildir
file names start with it); a poll reads the files of that second again and everything newer,
and a message already applied is skipped by its `inbound_messages` row, so a poll that crashed
midway, or a file that arrived within the cursor's second, is never lost or applied twice.
"""

from __future__ import annotations

import json
import logging
import os
import re
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.parser import BytesHeaderParser
from email.utils import getaddresses
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from engine.db import is_transient, tenant_transaction
from engine.mailboxes import inbound, trust
from engine.mailboxes.classify import classify
from engine.sending import store
from engine.tenants import all_tenants
from engine.text import first_line

log = logging.getLogger(__name__)

_SECONDS = re.compile(r"^(\d+)\.")
_MICROS = re.compile(r"^\d+\.M(\d+)")
_SENDERS = sa.text(
    "select id, lower(email) as email from app.sender_accounts where address_revoked_at is null"
)


@dataclass
class PollReport:
    """What one poll did; `cursor` is where the next one starts."""

    read: int = 0
    inbound: int = 0
    applied: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    already: int = 0
    unmatched: int = 0
    suppressed: int = 0
    errors: list[str] = field(default_factory=list)
    cursor: int = 0
    #: The earliest arrival second of a message that failed for a reason that may pass (the
    #: database away): where the next poll must start again. None: nothing to retry.
    retry_from: int | None = None

    @property
    def resume_at(self) -> int:
        """Where the next poll starts: this one's cursor, or the first message to retry."""
        return self.cursor if self.retry_from is None else min(self.cursor, self.retry_from)

    def count(self, done: inbound.Applied | None) -> None:
        """One message's outcome: applied (how), or applied before (None)."""
        if done is None:
            self.already += 1
            return
        self.applied[str(done.kind)] += 1
        self.unmatched += not done.matched
        self.suppressed += done.suppressed is not None

    def as_dict(self) -> dict[str, object]:
        return {
            "read": self.read,
            "inbound": self.inbound,
            "applied": dict(self.applied),
            "already_applied": self.already,
            "unmatched": self.unmatched,
            "suppressed": self.suppressed,
            "errors": len(self.errors),
            "cursor": self.cursor,
        }


def _arrival(name: str) -> int:
    m = _SECONDS.match(name)
    return int(m.group(1)) if m else 0


def _order(name: str) -> tuple[int, int, str]:
    """Arrival order: the second, then the microseconds (`1796000000.M5P...` before
    `1796000000.M40P...`: Python's Maildir does not pad them), then the name."""
    m = _MICROS.match(name)
    return (_arrival(name), int(m.group(1)) if m else 0, name)


def _files(maildir: Path, cursor: int) -> list[Path]:
    """The files of new/ and cur/ that arrived in or after second `cursor`, in arrival order
    (names and directory entries only: nothing is read or stat'ed)."""
    found = []
    for sub in ("new", "cur"):
        try:
            entries = list(os.scandir(maildir / sub))
        except FileNotFoundError:
            continue
        found += [Path(e.path) for e in entries if _arrival(e.name) >= cursor and e.is_file()]
    return sorted(found, key=lambda p: _order(p.name))


def maildir_names(maildir: Path, since: int = 0) -> list[tuple[int, str]]:
    """(arrival second, name without its flags) of the files that arrived in or after
    `since`, oldest first."""
    return [(_arrival(p.name), p.name.split(":", 1)[0]) for p in _files(maildir, since)]


def stored_cursor(path: Path) -> int:
    """Where the last complete poll got to (an arrival second), or 0: read everything."""
    try:
        return int(json.loads(path.read_text(encoding="utf-8"))["since"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def store_cursor(path: Path, since: int) -> None:
    """Record that every message that arrived before second `since` has been applied
    (atomically: a reader sees the old cursor or the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"since": since}), encoding="utf-8")
    os.replace(tmp, path)


def _accounts(app: Engine) -> dict[str, list[tuple[uuid.UUID, uuid.UUID]]]:
    """Sender account addresses: each to its (tenant, account) pairs."""
    accounts: dict[str, list[tuple[uuid.UUID, uuid.UUID]]] = defaultdict(list)
    for tenant_id, _ in all_tenants(app):
        with tenant_transaction(app, tenant_id) as conn:
            for row in conn.execute(_SENDERS):
                accounts[trust.address_key(row.email)].append((tenant_id, row.id))
    return accounts


#: Inbound messages applied per transaction (one that fails has them applied again one
#: transaction each, so it fails alone); a poll that stops loses at most this many messages'
#: work, which the next poll applies.
CHUNK = 200


def poll_maildir(
    app: Engine, maildir: Path, *, cursor: int = 0, authserv_ids: Iterable[str] = ()
) -> PollReport:
    """Apply every inbound message of `maildir` that arrived in or after second `cursor`;
    `authserv_ids`: the receiving servers whose `Authentication-Results` are trusted
    (`engine.mailboxes.trust`)."""
    report = PollReport(cursor=cursor)
    accounts = _accounts(app)
    # compat32: headers as written, parsed in a tenth of the time of the EmailMessage policy;
    # classification reads them as they are (engine.mailboxes.classify).
    headers = BytesHeaderParser(policy=policy.compat32)
    waiting: list[tuple[uuid.UUID, inbound.Incoming]] = []
    for path in _files(maildir, cursor):
        report.read += 1
        report.cursor = max(report.cursor, _arrival(path.name))
        try:
            raw = path.read_bytes()
        except FileNotFoundError:  # moved from new/ to cur/ meanwhile: read there next time
            continue
        # The envelope first (the sink's X-RcptTo), from the headers alone: the engine's own
        # outgoing copies, most of the Maildir, are never parsed further.
        envelope = headers.parsebytes(raw)
        # The sink appends its X-RcptTo last; one the sender wrote into the message comes first.
        sink_rcpt = (envelope.get_all("X-RcptTo") or [""])[-1]
        recipients = [trust.address_key(a) for _, a in getaddresses([sink_rcpt])]
        owners = [owner for r in recipients for owner in accounts.get(r, [])]
        if not owners:
            continue  # the engine's own outgoing copy, or mail for nobody we know
        report.inbound += 1
        message = message_from_bytes(raw, policy=policy.compat32)
        try:
            classified = classify(message)
        except Exception as exc:  # a message no rule can read: said, and the rest goes on
            report.errors.append(f"{path.name}: cannot classify: {exc}")
            continue
        try:
            received = datetime.fromtimestamp(path.stat().st_mtime, UTC)
        except FileNotFoundError:  # moved to cur/ since it was read: arrived now, near enough
            received = datetime.now(UTC)
        name = path.name.split(":", 1)[0]
        vouched = trust.authenticated(message, classified.sender, authserv_ids)
        waiting += [
            (t, inbound.Incoming(f"maildir:{s}", name, message, classified, s, received, vouched))
            for t, s in owners
        ]
        if len(waiting) >= CHUNK:
            _apply_all(app, waiting, report)
            waiting = []
    _apply_all(app, waiting, report)
    return report


def _apply_all(
    app: Engine, items: list[tuple[uuid.UUID, inbound.Incoming]], report: PollReport
) -> None:
    """`items` (tenant, message) applied, one transaction per tenant; when that transaction
    fails, each of its messages again in a transaction of its own, so one that fails fails
    alone."""
    by_tenant: dict[uuid.UUID, list[inbound.Incoming]] = defaultdict(list)
    for tenant_id, item in items:
        by_tenant[tenant_id].append(item)
    if items:  # plans on the statistics of tables that grew (a first big poll)
        with app.begin() as conn:
            conn.execute(store.REFRESH_STATISTICS)
    for tenant_id, mine in by_tenant.items():
        try:
            with tenant_transaction(app, tenant_id) as conn:
                results = inbound.apply_many(conn, mine)
        except Exception:
            results = []
            for item in mine:
                try:
                    with tenant_transaction(app, tenant_id) as conn:
                        results += inbound.apply_many(conn, [item])
                except Exception as exc:  # this message's own trouble: it alone
                    report.errors.append(f"{item.source_key}: {first_line(exc)}")
                    log.exception("inbound message %s not applied", item.source_key)
                    if is_transient(exc):  # read again by the next poll
                        arrival = _arrival(item.source_key)
                        report.retry_from = min(report.retry_from or arrival, arrival)
        for done in results:
            report.count(done)
