"""Sender accounts' IMAP mailboxes (imapclient), read incrementally.

Per account with an `imap_host`: log in, open its folder read-only, and fetch the messages
whose UID follows the account's cursor (`mailbox_cursors`: UIDVALIDITY and the last UID
applied), oldest first, a chunk at a time. Each message is classified and applied
(`engine.mailboxes.inbound`) in a transaction that also moves the cursor past it, so a poll
that stops anywhere resumes after the last message it applied; its `inbound_messages` row
(`UIDVALIDITY:UID`) keeps a message from being applied twice if the cursor is ever lost. A
folder whose UIDVALIDITY changed (recreated) is read again from its first message.

Only mail addressed to the account is applied (`trust.addressed_to`: the envelope recipient
the server stamped, else `To`/`Cc`), so a mailbox that several accounts share gives each only
its own; the rest is passed over. An `Authentication-Results` is trusted only when its
authserv-id is one the operator configured (`engine.mailboxes.trust`): not merely the account's
IMAP host, since a server that stamps none leaves a sender's own header on top.

One account's trouble (an unreachable server, a refused login, a password variable not set)
is reported and ends only that account's poll; a message no rule can read ends only itself.
Nothing is changed in the mailbox: no flag is set, nothing is moved or deleted.
"""

from __future__ import annotations

import logging
import os
import ssl
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from email import message_from_bytes, policy

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from engine.db import tenant_transaction
from engine.mailboxes import inbound, trust
from engine.mailboxes.classify import classify
from engine.mailboxes.maildir import PollReport
from engine.senders import ImapMailbox, SenderConfigError, imap_mailbox_for
from engine.tenants import all_tenants
from engine.text import first_line

log = logging.getLogger(__name__)

#: Messages fetched per round trip; every wait on the server has this timeout.
CHUNK = 50
TIMEOUT_SECONDS = 30.0

_ACCOUNTS = sa.text(
    """
    select s.id, s.email, s.imap_host, s.imap_port, s.imap_security, s.imap_username,
           s.imap_password_env, s.imap_folder, c.uidvalidity, c.last_uid
    from app.sender_accounts s
    left join app.mailbox_cursors c on c.tenant_id = s.tenant_id and c.sender_account_id = s.id
    where s.imap_host is not null and s.address_revoked_at is null
    order by s.email
    """
)
_CURSOR = sa.text(
    """
    insert into app.mailbox_cursors (tenant_id, sender_account_id, uidvalidity, last_uid,
                                     updated_at)
    values (app.current_tenant_id(), :sender_id, :uidvalidity, :uid, :now)
    on conflict (tenant_id, sender_account_id) do update
    set uidvalidity = excluded.uidvalidity,
        -- two polls at once never move it back
        last_uid = case when mailbox_cursors.uidvalidity = excluded.uidvalidity
                        then greatest(mailbox_cursors.last_uid, excluded.last_uid)
                        else excluded.last_uid end,
        updated_at = excluded.updated_at
    """
)


_ANY = sa.text("select exists (select from app.sender_accounts where imap_host is not null)")


def has_imap_mailboxes(app: Engine) -> bool:
    """Whether any tenant's sender account has an IMAP mailbox."""
    for tenant_id, _ in all_tenants(app):
        with tenant_transaction(app, tenant_id) as conn:
            if conn.execute(_ANY).scalar():
                return True
    return False


def _connect(mailbox: ImapMailbox):  # -> IMAPClient
    from imapclient import IMAPClient

    context = ssl.create_default_context()
    client = IMAPClient(
        mailbox.host,
        port=mailbox.port,
        ssl=mailbox.security == "tls",
        ssl_context=context,
        timeout=TIMEOUT_SECONDS,
    )
    client.normalise_times = False  # INTERNALDATE with its offset, not naive local time
    if mailbox.security == "starttls":
        client.starttls(context)
    client.login(mailbox.username, mailbox.password or "")
    return client


def poll_imap(
    app: Engine,
    *,
    env: Mapping[str, str] = os.environ,
    now: datetime | None = None,
    report: PollReport | None = None,
    authserv_ids: Iterable[str] = (),
) -> PollReport:
    """Apply what arrived in every IMAP mailbox of every tenant (module docstring);
    `authserv_ids`: whose `Authentication-Results` count."""
    report = report or PollReport()
    for tenant_id, tenant in all_tenants(app):
        with tenant_transaction(app, tenant_id) as conn:
            accounts = conn.execute(_ACCOUNTS).all()
        for account in accounts:
            try:
                trusted = frozenset(authserv_ids)
                _poll_account(app, tenant_id, tenant, account, env, now, report, trusted)
            except SenderConfigError as exc:
                report.errors.append(str(exc))
            except Exception as exc:  # the server, the network, the login
                report.errors.append(
                    f"mailbox of {account.email} ({account.imap_host}): "
                    f"{exc.__class__.__name__}: {first_line(exc)}"
                )
    return report


def _poll_account(
    app: Engine,
    tenant_id: uuid.UUID,
    tenant: str,
    account: sa.Row,
    env: Mapping[str, str],
    now: datetime | None,
    report: PollReport,
    trusted: frozenset[str],
) -> None:
    mailbox = imap_mailbox_for(account, tenant=tenant, env=env)
    client = _connect(mailbox)
    try:
        selected = client.select_folder(mailbox.folder, readonly=True)
        uidvalidity = int(selected[b"UIDVALIDITY"])
        after = account.last_uid if account.uidvalidity == uidvalidity else 0
        uids = sorted(uid for uid in client.search(["UID", f"{after + 1}:*"]) if uid > after)
        for start in range(0, len(uids), CHUNK):
            chunk = uids[start : start + CHUNK]
            fetched = client.fetch(chunk, ["BODY.PEEK[]", "INTERNALDATE"])
            for uid in chunk:
                data = fetched.get(uid)
                if data is None:  # expunged meanwhile
                    continue
                _apply(app, tenant_id, account, uidvalidity, uid, data, now, report, trusted)
    finally:
        try:
            client.logout()
        except Exception:  # the connection is gone already; nothing to give back
            log.debug("IMAP logout failed", exc_info=True)


def _apply(
    app: Engine,
    tenant_id: uuid.UUID,
    account: sa.Row,
    uidvalidity: int,
    uid: int,
    data: dict,
    now: datetime | None,
    report: PollReport,
    trusted: frozenset[str],
) -> None:
    report.read += 1
    message = message_from_bytes(data[b"BODY[]"], policy=policy.default)
    arrived = data.get(b"INTERNALDATE")
    if isinstance(arrived, datetime):
        received = arrived if arrived.tzinfo else arrived.replace(tzinfo=UTC)
    else:
        received = now or datetime.now(UTC)
    cursor = {
        "sender_id": account.id,
        "uidvalidity": uidvalidity,
        "uid": uid,
        "now": now or datetime.now(UTC),
    }
    if not trust.addressed_to(message, account.email):  # another account's, in a shared box
        with tenant_transaction(app, tenant_id) as conn:
            conn.execute(_CURSOR, cursor)
        return
    report.inbound += 1
    try:
        classified = classify(message)
    except Exception as exc:
        report.errors.append(f"{account.email} UID {uid}: cannot classify: {exc}")
        with tenant_transaction(app, tenant_id) as conn:
            conn.execute(_CURSOR, cursor)
        return
    try:
        with tenant_transaction(app, tenant_id) as conn:
            incoming = inbound.Incoming(
                mailbox=f"imap:{account.id}",
                source_key=f"{uidvalidity}:{uid}",
                message=message,
                classified=classified,
                sender_id=account.id,
                received_at=received.astimezone(UTC),
                authenticated=trust.authenticated(message, classified.sender, trusted),
            )
            (done,) = inbound.apply_many(conn, [incoming])
            conn.execute(_CURSOR, cursor)
    except Exception as exc:  # this message's own trouble: said, and the mailbox goes on
        report.errors.append(f"{account.email} UID {uid}: not applied: {first_line(exc)}")
        log.exception("IMAP message %s of %s not applied", uid, account.email)
        with tenant_transaction(app, tenant_id) as conn:
            conn.execute(_CURSOR, cursor)
        return
    report.count(done)
