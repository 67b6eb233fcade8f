"""Inbound messages applied: each recorded once, matched to the message it answers, its event
written and its effects made, in the caller's tenant transaction. A batch (`apply_many`, a
Maildir poll's 200 messages) takes the same few statements as one message: the matches, the
rows with their events, the effects, each one set-based over the batch, with the outcome the
messages would have one after the other.

* **Once.** The message's row in `inbound_messages` is inserted before its effects; if the
  mailbox has it already (the same place in it, or the same Message-ID), nothing else happens.
* **Matched** by the Message-IDs it refers to (In-Reply-To, References, a bounce's or report's
  original), else, for a reply, an auto-reply or an unsubscribe email, by address: the latest
  message to its author (of the receiving sender account; of any of the tenant's for an
  unsubscribe email). A bounce or complaint is matched by reference only, and only when it
  names that message's recipient as failed (if it names any).
* **Trusted** as `engine.mailboxes.trust` says: a message that matches nothing records no
  event and makes no effect (only its `inbound_messages` row, so it is read once); a reply
  matched by address alone, unless its author is authenticated, stops no company (its event's
  payload says `matched_by` and `authenticated`, which `engine.sequence.steps` reads).
* **Effects** (ARCHITECTURE's engine rules): a reply or auto-reply is an event (the engine's
  next pass ends the enrollment under `stop_on_reply`; an auto-reply stops nothing); a hard
  bounce, a complaint or an unsubscribe suppresses the address in the tenant, marks the
  contact, and the next pass ends its enrollments; a bounce also marks its message `bounced`.
  A soft bounce counts as hard when it is the third soft bounce of the address within
  `SOFT_BOUNCE_WINDOW`.
"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import Message

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from engine.mailboxes.classify import Classified, Kind, clean

SOFT_BOUNCES_AS_HARD = 3
SOFT_BOUNCE_WINDOW = timedelta(days=7)

# The message each one answers: by reference (best first), else the receiving account's (with
# `any_account`, the tenant's) latest message to the address. (The address is lowercased in a
# materialized CTE: compared as a column, the stored key is an index condition under row-level
# security; lower() of it would not be, as lower() is not leakproof.)
_MATCH = sa.text(
    """
    with x as materialized (
        select x.*, lower(x.address) as address_key
        from json_to_recordset(cast(:rows as json))
            as x(i int, ids text[], address text, sender_id uuid, any_account boolean,
                 received_at timestamptz)
    )
    select x.i, f.id, f.contact_id, f.campaign_id, f.step_id, f.recipient_email,
           f.recipient_key, f.rank
    from x
    left join lateral (
        select * from (
            (select m.id, m.contact_id, m.campaign_id, m.step_id, m.recipient_email,
                    m.recipient_key, 0 as rank,
                    array_position(x.ids, m.message_id) as position
             from app.sent_emails m
             where m.message_id = any(x.ids)
             order by position
             limit 1)
            union all
            (select m.id, m.contact_id, m.campaign_id, m.step_id, m.recipient_email,
                    m.recipient_key, 1 as rank, 0 as position
             from app.sent_emails m
             where m.tenant_id = app.current_tenant_id() and m.recipient_key = x.address_key
               and (x.any_account or m.sender_account_id = x.sender_id)
               and m.queued_at <= x.received_at  -- answers come after sends
             order by m.queued_at desc
             limit 1)
        ) both_
        order by rank, position
        limit 1
    ) f on true
    order by x.i
    """
)
# Soft bounces of these addresses since a time: (address key, message, when).
_SOFT_BOUNCES = sa.text(
    """
    select m.recipient_key as address, e.sent_email_id, e.occurred_at
    from app.sent_emails m
    join app.email_events e on e.tenant_id = m.tenant_id and e.sent_email_id = m.id
    where m.tenant_id = app.current_tenant_id() and m.recipient_key = any(:addresses)
      and e.event_type = 'bounce' and (e.payload ->> 'hard') = 'false'
      and e.occurred_at > cast(:since as timestamptz)
    """
)
# The messages' rows (once each: the conflict on its place or Message-ID), then their events.
_RECORD = sa.text(
    """
    with x as (
        select * from json_to_recordset(cast(:rows as json)) as x(
            i int, mailbox text, source_key text, message_id text, kind text, sender_id uuid,
            sent uuid, from_address text, detail text, at timestamptz, with_event boolean,
            contact uuid, campaign uuid, step uuid, payload jsonb, dedup text)
    ), recorded as (
        insert into app.inbound_messages
            (tenant_id, mailbox, source_key, message_id, kind, sender_account_id, sent_email_id,
             from_address, detail, received_at)
        select app.current_tenant_id(), mailbox, source_key, message_id, kind, sender_id, sent,
               from_address, detail, at
        from x order by i
        on conflict do nothing
        returning mailbox, source_key
    ), event as (
        insert into app.email_events
            (tenant_id, event_type, sent_email_id, contact_id, campaign_id, step_id,
             occurred_at, payload, dedup_key)
        select app.current_tenant_id(), x.kind, x.sent, x.contact, x.campaign, x.step, x.at,
               x.payload, x.dedup
        from x join recorded r on r.mailbox = x.mailbox and r.source_key = x.source_key
        where x.with_event
        order by x.i
        on conflict (tenant_id, dedup_key) do nothing
    )
    select mailbox, source_key from recorded
    """
)
# Suppressing messages' effects, the first per address and per contact (in the batch's order):
# the address suppressed, its contact marked, a bounce's message marked.
_EFFECTS = sa.text(
    """
    with x as materialized (
        select x.*, lower(x.email) as email_key
        from json_to_recordset(cast(:rows as json)) as x(
            i int, email text, reason text, status text, detail text, at timestamptz,
            contact uuid, bounced uuid)
    ), suppressed as (
        insert into app.suppressions (tenant_id, email, reason, detail, created_at)
        select distinct on (email_key) app.current_tenant_id(), email, reason, detail, at
        from x order by email_key, i
        on conflict (tenant_id, lower(email)) do nothing
    ), marked as (
        update app.contacts c set status = f.status, updated_at = f.at
        from (select distinct on (contact) * from x where contact is not null
              order by contact, i) f
        where c.tenant_id = app.current_tenant_id() and c.id = f.contact and c.status = 'active'
    )
    update app.sent_emails m set status = 'bounced', last_error = x.detail, updated_at = x.at
    from x
    where m.tenant_id = app.current_tenant_id() and m.id = x.bounced and m.status = 'sent'
    """
)
# The contacts of addresses an effect names without its contact (an unsubscribe email from
# someone who was not the recipient). lower() of the column is no index condition under
# row-level security: a scan of the tenant's contacts, only for such batches.
_CONTACTS_BY_ADDRESS = sa.text(
    """
    select lower(email) as email_key, id from app.contacts
    where tenant_id = app.current_tenant_id() and lower(email) = any(:keys)
    """
)

#: What each suppressing kind makes of the address and its contact.
_SUPPRESSING = {
    Kind.BOUNCE: ("bounce", "bounced"),
    Kind.COMPLAINT: ("complaint", "complained"),
    Kind.UNSUBSCRIBE: ("unsubscribe", "unsubscribed"),
}


def _raw(message: Message, name: str) -> str:
    """A header as written (the email package would parse it into an object first), as the
    database can store it."""
    for key, value in message.raw_items():
        if key.lower() == name.lower():
            return clean(" ".join(str(value).split()))
    return ""


def _message_id(message: Message) -> str | None:
    return _raw(message, "Message-ID").strip("<> ") or None


@dataclass(frozen=True)
class Applied:
    kind: Kind
    matched: bool
    suppressed: str | None  # the address suppressed, if any
    hard: bool = False


@dataclass(frozen=True)
class Incoming:
    """One message read from a mailbox, classified, to apply."""

    mailbox: str
    #: Its place in the mailbox (a Maildir file name; UIDVALIDITY:UID).
    source_key: str
    message: Message
    classified: Classified
    sender_id: uuid.UUID | None
    received_at: datetime
    #: Whether the receiving server vouches for its `From:` (`trust.authenticated`).
    authenticated: bool = False


class SoftBounces:
    """An address's soft bounces of different messages within `SOFT_BOUNCE_WINDOW`: the third
    counts as hard. Loaded for some addresses from the database, then told each new one in
    the order it is applied (`is_hard`)."""

    def __init__(self, conn: Connection, addresses: set[str], since: datetime):
        self._seen: dict[str, list[tuple[datetime, uuid.UUID]]] = defaultdict(list)
        if addresses:
            rows = conn.execute(
                _SOFT_BOUNCES, {"addresses": sorted(addresses), "since": since}
            ).all()
            for row in rows:
                self._seen[row.address].append((row.occurred_at, row.sent_email_id))

    def is_hard(self, address: str, message: uuid.UUID, at: datetime, *, upto: bool) -> bool:
        """Record a soft bounce of `message` to `address` at `at`; whether it is the address's
        third. `upto`: count only bounces up to `at` (an export's events come in any order),
        else all since the window's start (a mailbox's, in arrival order)."""
        seen = self._seen[address]
        seen.append((at, message))
        messages = {
            m for when, m in seen if at - SOFT_BOUNCE_WINDOW < when and (not upto or when <= at)
        }
        return len(messages) >= SOFT_BOUNCES_AS_HARD


def apply_many(conn: Connection, messages: list[Incoming]) -> list[Applied | None]:
    """Apply `messages` (module docstring) in a few statements whatever their number, as if
    one after the other in this order; each one's outcome, None when it was applied before."""
    if not messages:
        return []
    addresses = [_match_address(m.classified) for m in messages]
    found = conn.execute(
        _MATCH,
        {
            "rows": json.dumps(
                [
                    {
                        "i": i,
                        "ids": list(m.classified.refers_to),
                        "address": address or "",
                        "sender_id": str(m.sender_id) if m.sender_id else None,
                        "any_account": m.classified.kind is Kind.UNSUBSCRIBE,
                        "received_at": m.received_at.isoformat(),
                    }
                    for i, (m, address) in enumerate(zip(messages, addresses, strict=True))
                ]
            )
        },
    ).all()
    soft = [
        i
        for i, m in enumerate(messages)
        if m.classified.kind is Kind.BOUNCE and not m.classified.hard
    ]
    history = SoftBounces(
        conn,
        {found[i].recipient_key for i in soft if found[i].id},
        min((messages[i].received_at for i in soft), default=messages[0].received_at)
        - SOFT_BOUNCE_WINDOW,
    )
    plans = [_plan(m, found[i], history) for i, m in enumerate(messages)]
    recorded = {
        (row.mailbox, row.source_key)
        for row in conn.execute(
            _RECORD, {"rows": json.dumps([p.record | {"i": i} for i, p in enumerate(plans)])}
        )
    }
    effects = [
        p.effect | {"i": i}
        for i, (m, p) in enumerate(zip(messages, plans, strict=True))
        if p.effect is not None and (m.mailbox, m.source_key) in recorded
    ]
    if unknown := {e["email"].lower() for e in effects if e["contact"] is None}:
        contacts = dict(
            conn.execute(_CONTACTS_BY_ADDRESS, {"keys": sorted(unknown)}).tuples().all()
        )
        for e in effects:
            if e["contact"] is None and (found := contacts.get(e["email"].lower())):
                e["contact"] = str(found)
    if effects:
        conn.execute(_EFFECTS, {"rows": json.dumps(effects)})
    return [
        p.applied if (m.mailbox, m.source_key) in recorded else None
        for m, p in zip(messages, plans, strict=True)
    ]


@dataclass(frozen=True)
class _Plan:
    record: dict
    effect: dict | None
    applied: Applied


def _match_address(c: Classified) -> str:
    """The address a message may be matched by when its references match nothing: none for a
    bounce or complaint (anyone can write one naming any address), else its author."""
    return "" if c.kind in (Kind.BOUNCE, Kind.COMPLAINT) else c.sender


def _plan(m: Incoming, sent: sa.Row, history: SoftBounces) -> _Plan:
    """What applying `m` writes, given the message it matched (`sent`; module docstring)."""
    c = m.classified
    matched = sent.id is not None
    if c.kind in (Kind.BOUNCE, Kind.COMPLAINT) and c.addresses:
        # A report naming our message but another recipient as failed (or complaining) is
        # not about that message: it records nothing, as one naming no message of ours.
        matched = matched and sent.recipient_key in c.addresses
    soft = c.kind is Kind.BOUNCE and not c.hard
    hard = c.hard
    if soft and matched:
        hard = history.is_hard(sent.recipient_key, sent.id, m.received_at, upto=False)
    # Who is suppressed: a bounce's or complaint's recipient of ours; an unsubscribe email's
    # author, if mailed.
    address = target_contact = None
    if c.kind in (Kind.BOUNCE, Kind.COMPLAINT):
        if matched:
            address, target_contact = sent.recipient_email, sent.contact_id
    elif c.kind is Kind.UNSUBSCRIBE and matched and sent.recipient_key == c.sender:
        address, target_contact = c.sender, sent.contact_id
    payload = {
        "subject": _raw(m.message, "Subject")[:300],
        "from": c.sender,
        "detail": c.detail,
        "mailbox": m.mailbox,
    }
    if c.kind is Kind.BOUNCE:
        payload |= {"hard": hard, "addresses": list(c.addresses)}
    if matched:
        payload |= {
            "matched_by": "reference" if sent.rank == 0 else "address",
            "authenticated": m.authenticated,
        }
    record = {
        "mailbox": m.mailbox,
        "source_key": m.source_key,
        "message_id": _message_id(m.message),
        "kind": str(c.kind),
        "sender_id": str(m.sender_id) if m.sender_id else None,
        "sent": str(sent.id) if matched else None,
        "from_address": c.sender or None,
        "detail": c.detail or None,
        "at": m.received_at.isoformat(),
        # What matches none of our messages says nothing about any of them: no event.
        "with_event": matched,
        "contact": _text(sent.contact_id) if matched else None,
        "campaign": _text(sent.campaign_id) if matched else None,
        "step": _text(sent.step_id) if matched else None,
        "payload": payload,
        "dedup": f"inbound:{m.mailbox}:{m.source_key}",
    }
    effect = suppressed = None
    if c.kind in _SUPPRESSING and address and (c.kind is not Kind.BOUNCE or hard):
        reason, status = _SUPPRESSING[c.kind]
        effect = {
            "email": address,
            "reason": reason,
            "status": status,
            "detail": f"{c.kind}: {c.detail}" if c.detail else str(c.kind),
            "at": m.received_at.isoformat(),
            "contact": _text(target_contact),
            "bounced": str(sent.id) if c.kind is Kind.BOUNCE and target_contact else None,
        }
        suppressed = address.lower()
    return _Plan(record, effect, Applied(c.kind, matched, suppressed, hard))


def _text(value: object) -> str | None:
    return None if value is None else str(value)
