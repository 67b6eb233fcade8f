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

from engine.mailboxes.classify import Classified, Kind, clean

SOFT_BOUNCES_AS_HARD = 3
SOFT_BOUNCE_WINDOW = timedelta(days=7)

# The message it answers: by reference (best first), else the receiving account's latest
# message to the address; and, for a bounce, that address's soft bounces within the window.
_MATCH = sa.text(
    """
    with by_id as (
        select m.id, m.contact_id, m.campaign_id, m.step_id, m.recipient_email,
               m.recipient_key, 0 as rank,
               array_position(cast(:ids as text[]), m.message_id) as position
        from app.sent_emails m
        where m.message_id = any(cast(:ids as text[]))
        order by position
        limit 1
    ), by_address as (
        select m.id, m.contact_id, m.campaign_id, m.step_id, m.recipient_email,
               m.recipient_key, 1 as rank,
               0 as position
        from app.sent_emails m
        where not exists (select from by_id)  -- only for what no reference found
          and m.tenant_id = app.current_tenant_id()
          and m.recipient_key = lower(cast(:address as text))  -- an index condition
          and m.sender_account_id = cast(:sender_id as uuid)
          and m.queued_at <= cast(:received_at as timestamptz)  -- answers come after sends
        order by m.queued_at desc
        limit 1
    ), found as (
        select * from (select * from by_id union all select * from by_address) both_
        order by rank limit 1
    )
    select f.id, f.contact_id, f.campaign_id, f.step_id, f.recipient_email, f.rank,
           case when cast(:soft as boolean) then (
               -- soft bounces of different messages: one message's repeated delay warnings
               -- are one
               select count(distinct e.sent_email_id) from app.email_events e
               join app.sent_emails m on m.tenant_id = e.tenant_id and m.id = e.sent_email_id
               where m.tenant_id = app.current_tenant_id()
                 and m.recipient_key
                     = coalesce(f.recipient_key, lower(cast(:address as text)))
                 and e.event_type = 'bounce' and (e.payload ->> 'hard') = 'false'
                 and e.occurred_at > cast(:since as timestamptz)
           ) end as soft_bounces
    from (select) one left join found f on true
    """
)
# The message's row (once: the conflict on its place or Message-ID), then its event.
_RECORD = sa.text(
    """
    with recorded as (
        insert into app.inbound_messages
            (tenant_id, mailbox, source_key, message_id, kind, sender_account_id, sent_email_id,
             from_address, detail, received_at)
        values (app.current_tenant_id(), :mailbox, :source_key, :message_id, :kind, :sender_id,
                :sent, :from_address, :detail, :at)
        on conflict do nothing
        returning id
    ), event as (
        insert into app.email_events
            (tenant_id, event_type, sent_email_id, contact_id, campaign_id, step_id,
             occurred_at, payload, dedup_key)
        select app.current_tenant_id(), :kind, :sent, :contact, :campaign, :step, :at,
               cast(:payload as jsonb), :dedup
        from recorded where cast(:with_event as boolean)
        on conflict (tenant_id, dedup_key) do nothing
    )
    select id from recorded
    """
)
# A suppressing message's effects: the address suppressed, its contact marked, a bounce's
# message marked.
_EFFECTS = """
    with suppressed as (
        insert into app.suppressions (tenant_id, email, reason, detail, created_at)
        values (app.current_tenant_id(), :email, :reason, :detail, :at)
        on conflict (tenant_id, lower(email)) do nothing
    ), marked as (
        update app.contacts set status = :status, updated_at = :at
        where tenant_id = app.current_tenant_id() and status = 'active' and {contact}
    )
    update app.sent_emails set status = 'bounced', last_error = :detail, updated_at = :at
    where tenant_id = app.current_tenant_id() and id = cast(:bounced as uuid)
      and status = 'sent'
    """
# The contact by its key when the message named it; else by its address (lower() is never an
# index condition under row-level security: it is not leakproof).
_EFFECTS_BY_CONTACT = sa.text(_EFFECTS.format(contact="id = cast(:contact as uuid)"))
_EFFECTS_BY_ADDRESS = sa.text(_EFFECTS.format(contact="lower(email) = lower(:email)"))

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
    soft = c.kind is Kind.BOUNCE and not c.hard
    sent = conn.execute(
        _MATCH,
        {
            "ids": list(c.refers_to),
            "address": address or "",
            "sender_id": sender_id,
            "soft": soft,
            "since": received_at - SOFT_BOUNCE_WINDOW,
            "received_at": received_at,
        },
    ).one()
    matched = sent.id is not None
    hard = c.hard or (soft and (sent.soft_bounces or 0) + 1 >= SOFT_BOUNCES_AS_HARD)
    # Who is suppressed. A bounce or complaint is anyone's to write: it suppresses only the
    # recipient of a message of ours it names by Message-ID, and only if it names that
    # recipient as failed (when it names any). An unsubscribe suppresses who asked (a colleague
    # answering a forwarded copy is not the recipient).
    target_contact = None
    if c.kind in (Kind.BOUNCE, Kind.COMPLAINT):
        ours = matched and sent.rank == 0
        named = ours and (not c.addresses or sent.recipient_email.lower() in c.addresses)
        address = sent.recipient_email if named else None
        target_contact = sent.contact_id if address else None
    elif c.kind is Kind.UNSUBSCRIBE:
        address = c.sender
        if matched and sent.recipient_email.lower() == c.sender:
            target_contact = sent.contact_id
    payload = {
        "subject": _raw(message, "Subject")[:300],
        "from": c.sender,
        "detail": c.detail,
        "mailbox": mailbox,
    }
    if c.kind is Kind.BOUNCE:
        payload |= {"hard": hard, "addresses": list(c.addresses)}
    row_id = conn.execute(
        _RECORD,
        {
            "mailbox": mailbox,
            "source_key": source_key,
            "message_id": _message_id(message),
            "kind": str(c.kind),
            "sender_id": sender_id,
            "sent": sent.id,
            "from_address": c.sender or None,
            "detail": c.detail or None,
            "at": received_at,
            # An unmatched reply says nothing about any message or contact: no event.
            "with_event": matched or c.kind is not Kind.REPLY,
            "contact": sent.contact_id,
            "campaign": sent.campaign_id,
            "step": sent.step_id,
            "payload": json.dumps(payload),
            "dedup": f"inbound:{mailbox}:{source_key}",
        },
    ).scalar()
    if row_id is None:
        return None  # applied before (its place or its Message-ID): nothing else happens
    suppressed = None
    if c.kind in _SUPPRESSING and address and (c.kind is not Kind.BOUNCE or hard):
        reason, status = _SUPPRESSING[c.kind]
        conn.execute(
            _EFFECTS_BY_CONTACT if target_contact is not None else _EFFECTS_BY_ADDRESS,
            {
                "email": address,
                "reason": reason,
                "status": status,
                "detail": f"{c.kind}: {c.detail}" if c.detail else str(c.kind),
                "at": received_at,
                "contact": target_contact,
                "bounced": sent.id if c.kind is Kind.BOUNCE and target_contact else None,
            },
        )
        suppressed = address.lower()
    return Applied(c.kind, matched, suppressed, hard)
