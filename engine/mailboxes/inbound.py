"""An inbound message applied: recorded once, matched to the message it answers, its event
written and its effects made, in the caller's tenant transaction.

* **Once.** The message's row in `inbound_messages` is inserted before its effects; if the
  mailbox has it already (the same place in it, or the same Message-ID), nothing else happens.
* **Matched** by the Message-IDs it refers to (In-Reply-To, References, a bounce's or report's
  original), else by address: the latest message of the receiving sender account to the
  reply's author (a bounce's or complaint's failed recipient).
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
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import Message

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from engine.mailboxes.classify import Classified, Kind

SOFT_BOUNCES_AS_HARD = 3
SOFT_BOUNCE_WINDOW = timedelta(days=7)

_RECORD = sa.text(
    """
    insert into app.inbound_messages
        (tenant_id, mailbox, source_key, message_id, kind, sender_account_id, sent_email_id,
         from_address, detail, received_at)
    values (app.current_tenant_id(), :mailbox, :source_key, :message_id, :kind, :sender_id,
            :sent, :from_address, :detail, :received_at)
    on conflict do nothing
    returning id
    """
)
_BY_ID = sa.text(
    """
    select m.id, m.contact_id, m.campaign_id, m.step_id, m.recipient_email
    from app.sent_emails m
    where m.message_id = any(:ids)
    order by array_position(cast(:ids as text[]), m.message_id)
    limit 1
    """
)
_BY_ADDRESS = sa.text(
    """
    select m.id, m.contact_id, m.campaign_id, m.step_id, m.recipient_email
    from app.sent_emails m
    where m.tenant_id = app.current_tenant_id() and m.sender_account_id = :sender_id
      and lower(m.recipient_email) = lower(:address)
    order by m.queued_at desc
    limit 1
    """
)
_EVENT = sa.text(
    """
    insert into app.email_events
        (tenant_id, event_type, sent_email_id, contact_id, campaign_id, step_id, occurred_at,
         payload, dedup_key)
    values (app.current_tenant_id(), :kind, :sent, :contact, :campaign, :step, :at,
            cast(:payload as jsonb), :dedup)
    on conflict (tenant_id, dedup_key) do nothing
    """
)
_SOFT_BOUNCES = sa.text(
    """
    select count(*) from app.email_events e
    join app.sent_emails m on m.tenant_id = e.tenant_id and m.id = e.sent_email_id
    where e.event_type = 'bounce' and (e.payload ->> 'hard') = 'false'
      and lower(m.recipient_email) = lower(:address)
      and e.occurred_at > cast(:since as timestamptz)
    """
)
_SUPPRESS = sa.text(
    """
    insert into app.suppressions (tenant_id, email, reason, detail, created_at)
    values (app.current_tenant_id(), :email, :reason, :detail, :at)
    on conflict (tenant_id, lower(email)) do nothing
    """
)
_MARK_CONTACT = sa.text(
    """
    update app.contacts set status = :status, updated_at = :at
    where lower(email) = lower(:email) and status = 'active'
    """
)
_MARK_BOUNCED = sa.text(
    """
    update app.sent_emails set status = 'bounced', last_error = :detail, updated_at = :at
    where id = :sent and status = 'sent'
    """
)

#: What each suppressing kind makes of the address and its contact.
_SUPPRESSING = {
    Kind.BOUNCE: ("bounce", "bounced"),
    Kind.COMPLAINT: ("complaint", "complained"),
    Kind.UNSUBSCRIBE: ("unsubscribe", "unsubscribed"),
}


def _raw(message: Message, name: str) -> str:
    """A header as written (the email package would parse it into an object first)."""
    for key, value in message.raw_items():
        if key.lower() == name.lower():
            return " ".join(str(value).split())
    return ""


def _message_id(message: Message) -> str | None:
    return _raw(message, "Message-ID").strip("<> ") or None


@dataclass(frozen=True)
class Applied:
    kind: Kind
    matched: bool
    suppressed: str | None  # the address suppressed, if any
    hard: bool = False


def apply(
    conn: Connection,
    *,
    mailbox: str,
    source_key: str,
    message: Message,
    classified: Classified,
    sender_id: uuid.UUID | None,
    received_at: datetime,
) -> Applied | None:
    """Apply one inbound message (module docstring); None when it was applied before."""
    c = classified
    address = c.addresses[0] if c.addresses else c.sender
    sent = None
    if c.refers_to:
        sent = conn.execute(_BY_ID, {"ids": list(c.refers_to)}).first()
    if sent is None and sender_id is not None and address:
        sent = conn.execute(_BY_ADDRESS, {"sender_id": sender_id, "address": address}).first()
    row_id = conn.execute(
        _RECORD,
        {
            "mailbox": mailbox,
            "source_key": source_key,
            "message_id": _message_id(message),
            "kind": str(c.kind),
            "sender_id": sender_id,
            "sent": None if sent is None else sent.id,
            "from_address": c.sender or None,
            "detail": c.detail or None,
            "received_at": received_at,
        },
    ).scalar()
    if row_id is None:
        return None  # applied before (the row's unique key): nothing else happens
    if sent is not None and c.kind is not Kind.REPLY:
        address = sent.recipient_email
    hard = c.hard
    if c.kind is Kind.BOUNCE and not hard and address:
        since = received_at - SOFT_BOUNCE_WINDOW
        earlier = conn.execute(_SOFT_BOUNCES, {"address": address, "since": since}).scalar()
        hard = earlier + 1 >= SOFT_BOUNCES_AS_HARD
    payload = {
        "subject": _raw(message, "Subject")[:300],
        "from": c.sender,
        "detail": c.detail,
        "mailbox": mailbox,
    }
    if c.kind is Kind.BOUNCE:
        payload |= {"hard": hard, "addresses": list(c.addresses)}
    if sent is not None or c.kind is not Kind.REPLY:
        conn.execute(
            _EVENT,
            {
                "kind": str(c.kind),
                "sent": None if sent is None else sent.id,
                "contact": None if sent is None else sent.contact_id,
                "campaign": None if sent is None else sent.campaign_id,
                "step": None if sent is None else sent.step_id,
                "at": received_at,
                "payload": json.dumps(payload),
                "dedup": f"inbound:{mailbox}:{source_key}",
            },
        )
    suppressed = None
    if c.kind in _SUPPRESSING and address and (c.kind is not Kind.BOUNCE or hard):
        reason, status = _SUPPRESSING[c.kind]
        detail = f"{c.kind}: {c.detail}" if c.detail else str(c.kind)
        conn.execute(
            _SUPPRESS, {"email": address, "reason": reason, "detail": detail, "at": received_at}
        )
        conn.execute(_MARK_CONTACT, {"email": address, "status": status, "at": received_at})
        suppressed = address.lower()
    if c.kind is Kind.BOUNCE and sent is not None and hard:
        conn.execute(_MARK_BOUNCED, {"sent": sent.id, "detail": c.detail, "at": received_at})
    return Applied(c.kind, sent is not None, suppressed, hard)
