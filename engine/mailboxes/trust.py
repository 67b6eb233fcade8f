"""What an inbound message may be trusted for, when anyone can write to a sender account.

Nothing in a message proves who wrote it: `From:`, `To:`, `In-Reply-To` and a bounce's report
are text its sender chose. The rules, applied by `engine.mailboxes.inbound`:

* **Whose mail it is.** A tenant reads only mail addressed to its own sender accounts, and a
  sender address belongs to one tenant (the database refuses a second, migration 0019). The
  address is the envelope recipient where the receiving server recorded one: the local sink's
  `X-RcptTo` (appended below the message's own headers, so the last one is the sink's), an
  IMAP server's topmost `Delivered-To` or `X-Original-To`; else `To`/`Cc` (`addressed_to`).
* **Matched by reference** (`In-Reply-To`, `References`, a report's original Message-ID naming
  one of this tenant's messages): whoever writes it has seen our message. Such a reply may
  stop its contact's sequence and, under `stop_on_reply: company`, its whole company's.
* **Matched by address** only (the receiving account's latest message to the `From:`
  address): the address can be forged. Such a reply stops only that contact's own sequence,
  never its company's; an unsubscribe email acts only for an address this tenant has mailed
  (the mailto link of List-Unsubscribe writes one with no reference); an address never mailed
  gets nothing: no event, no suppression.
* **Bounces and complaints** (DSN, ARF) count only when they name one of this tenant's
  messages by Message-ID (and, if they name a failed recipient, that message's): one that
  matches no message of ours records nothing but the mailbox's note that it was read.
* **Authenticated** (`authenticated`): when the receiving server stamped
  `Authentication-Results` with a DMARC pass for the `From:` domain, or a DKIM or SPF pass of
  that domain or a parent of it (relaxed alignment), the `From:` address is trusted as if the mail
  were matched by reference, so an address-matched reply may stop its company. Only the
  topmost `Authentication-Results` counts, and only when its authserv-id is one the operator
  configured (`PENGUIN_AUTHSERV_ID`, comma-separated; never implied, not even the account's
  own IMAP host): a sender can write such a header too, but only below the ones the
  receiving servers add above it, and a server that adds none leaves the sender's on top.
  So an authserv-id is to be trusted only where that server stamps every message it takes
  (and, as RFC 8601 section 5 asks, removes any header claiming its id): the local sink
  stamps none, so by default nothing read from its Maildir or IMAP is authenticated.
* An IMAP account gets only the mail of its own address, so a mailbox reached by an alias
  that is in neither the stamped envelope recipient nor `To`/`Cc` is not read for it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from email.message import Message
from email.utils import getaddresses

import authres
import idna

#: Headers a receiving server writes with the envelope recipient (the topmost is the last hop's).
ENVELOPE_RECIPIENT_HEADERS = ("Delivered-To", "X-Original-To")


def _topmost(message: Message, name: str) -> str | None:
    """The first header `name` as written: receiving servers add theirs above the rest."""
    for key, value in message.raw_items():
        if key.lower() == name.lower():
            return str(value)
    return None


def address_key(address: str) -> str:
    """`address` as mailboxes compare it: lowercased, its domain in ASCII (IDNA). A sender
    account stores an internationalized domain in Unicode (`sales@bücher.example`), while a
    server without SMTPUTF8 delivers to, and stamps, its ASCII form (`xn--bcher-kva`)."""
    local, at, domain = address.strip().rpartition("@")
    if not at or domain.isascii():
        return address.strip().lower()
    with contextlib.suppress(idna.IDNAError, UnicodeError):  # no ASCII form: compared as is
        domain = idna.encode(domain, uts46=True).decode("ascii")
    return f"{local}@{domain}".lower()


def _addresses(values: Iterable[str | None]) -> set[str]:
    found = getaddresses([" ".join(v.split()) for v in values if v])
    return {address_key(a) for _, a in found if a}


def addressed_to(message: Message, address: str) -> bool:
    """Whether `message` (from an IMAP mailbox) is addressed to `address`: its envelope
    recipient as the receiving server recorded it, else its `To`/`Cc`. Headers are read as
    written (no policy's parser, which a malformed header could make raise)."""
    address = address_key(address)
    stamped = [_topmost(message, name) for name in ENVELOPE_RECIPIENT_HEADERS]
    if any(stamped):
        return address in _addresses(stamped)
    written = [str(v) for k, v in message.raw_items() if k.lower() in ("to", "cc")]
    return address in _addresses(written)


def _aligned(domain: str, author_domain: str) -> bool:
    domain = domain.strip().strip(".").lower().rpartition("@")[2]
    return bool(domain) and (author_domain == domain or author_domain.endswith("." + domain))


def authenticated(message: Message, author: str, authserv_ids: Iterable[str]) -> bool:
    """Whether the receiving server vouches for `author` (the message's `From:` address):
    its topmost `Authentication-Results`, with one of `authserv_ids`, says DMARC passed for the
    author's domain, or DKIM or SPF passed for it or a parent domain (module docstring)."""
    trusted = {i.strip().lower() for i in authserv_ids if i and i.strip()}
    author_domain = author.rpartition("@")[2].lower()
    if not (trusted and author_domain):  # the usual case: nothing more to read
        return False
    header = _topmost(message, "Authentication-Results")
    if not header:
        return False
    parsed = None
    with contextlib.suppress(Exception):  # a header no parser reads vouches for nothing
        parsed = authres.AuthenticationResultsHeader.parse_value(" ".join(header.split()))
    if parsed is None or (parsed.authserv_id or "").lower() not in trusted:
        return False
    for result in parsed.results:
        if (result.result or "").lower() != "pass":
            continue
        found = {(p.type, p.name): p.value or "" for p in result.properties}
        method = (result.method or "").lower()
        if method == "dmarc":  # about the From: domain itself
            if found.get(("header", "from"), author_domain).lower() == author_domain:
                return True
            continue
        if method == "dkim":
            domain = found.get(("header", "d"), "")
        elif method == "spf":
            domain = found.get(("smtp", "mailfrom"), "")
        else:
            continue
        if _aligned(domain, author_domain):
            return True
    return False
