"""Campaigns, contacts, enrollments and events written straight into the tables, for the tests
of the set-based steps and conditions (campaign files are applied elsewhere; these tests need
exactly the rows the engine reads: steps linked by next/true/false, condition_rules and
action_payload as a file would store them)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

_LIST = sa.text(
    """
    insert into app.contact_lists (tenant_id, name) values (app.current_tenant_id(), :name)
    on conflict (tenant_id, name) do update set name = excluded.name
    returning id
    """
)
_CAMPAIGN = sa.text(
    """
    insert into app.campaigns (tenant_id, name, list_id, status, start_at, end_at, launched_at)
    values (app.current_tenant_id(), :name, :list_id, :status, :start_at, :end_at, :now)
    returning id
    """
)
_SETTINGS = sa.text(
    """
    insert into app.campaign_settings (campaign_id, tenant_id, stop_on_reply)
    values (:campaign_id, app.current_tenant_id(), :stop_on_reply)
    """
)
_STEP = sa.text(
    """
    insert into app.campaign_steps
        (tenant_id, campaign_id, step_order, key, step_type, subject, body_text, wait_duration,
         wait_until, condition_rules, action_payload, removed_at)
    values (app.current_tenant_id(), :campaign_id, :step_order, :key, :step_type, :subject,
            :body_text, :wait_duration, :wait_until, cast(:condition as jsonb),
            cast(:action as jsonb), :removed_at)
    returning id
    """
)
_LINK = sa.text(
    """
    update app.campaign_steps
    set next_step_id = :next, true_next_step_id = :true_next, false_next_step_id = :false_next
    where id = :id
    """
)
_CONTACT = sa.text(
    """
    insert into app.contacts
        (tenant_id, email, first_name, last_name, company, city, country, timezone, lead_score,
         status, tags, attributes)
    values (app.current_tenant_id(), :email, :first_name, :last_name, :company, :city, :country,
            :timezone, :lead_score, :status, :tags, cast(:attributes as jsonb))
    returning id
    """
)
_MEMBER = sa.text(
    """
    insert into app.contact_list_members (tenant_id, list_id, contact_id)
    values (app.current_tenant_id(), :list_id, :contact_id)
    """
)
_EVENT = sa.text(
    """
    insert into app.email_events
        (tenant_id, event_type, contact_id, campaign_id, step_id, occurred_at, dedup_key,
         machine_reason)
    values (app.current_tenant_id(), :event_type, :contact_id, :campaign_id, :step_id, :at,
            :dedup_key, :machine_reason)
    """
)

END = "end"


@dataclass(frozen=True)
class Campaign:
    id: uuid.UUID
    list_id: uuid.UUID
    steps: dict[str, uuid.UUID]  # step key -> id


def add_campaign(
    conn: Connection,
    name: str,
    now: datetime,
    steps: list[dict[str, Any]],
    *,
    list_name: str = "leads",
    status: str = "active",
    stop_on_reply: str = "contact",
    start_at: datetime | None = None,
    end_at: datetime | None = None,
) -> Campaign:
    """A campaign on list `list_name` with `steps` written as in a campaign file:
    ``{"id": "pause", "wait": timedelta(days=3)}``, ``{"id": "w", "wait_until": datetime}``,
    ``{"id": "intro", "email": "subject"}``, ``{"id": "warm?", "condition": {...}, "then": ...,
    "else": ...}``, ``{"id": "t", "action": {...}}``; ``next`` jumps; ``removed`` soft-deletes.
    Steps without a jump go on to the next one in the list; ``"end"`` completes."""
    list_id = conn.execute(_LIST, {"name": list_name}).scalar_one()
    campaign_id = conn.execute(
        _CAMPAIGN,
        {
            "name": name,
            "list_id": list_id,
            "status": status,
            "start_at": start_at,
            "end_at": end_at,
            "now": now,
        },
    ).scalar_one()
    conn.execute(_SETTINGS, {"campaign_id": campaign_id, "stop_on_reply": stop_on_reply})
    ids: dict[str, uuid.UUID] = {}
    for order, step in enumerate(steps, start=1):
        kind = next(k for k in ("email", "wait", "wait_until", "condition", "action") if k in step)
        ids[step["id"]] = conn.execute(
            _STEP,
            {
                "campaign_id": campaign_id,
                "step_order": None if step.get("removed") else order,
                "key": step["id"],
                "step_type": "wait" if kind == "wait_until" else kind,
                "subject": step.get("email"),
                "body_text": "Hello" if kind == "email" else None,
                "wait_duration": step.get("wait"),
                "wait_until": step.get("wait_until"),
                "condition": json.dumps(step["condition"]) if "condition" in step else None,
                "action": json.dumps(step["action"]) if "action" in step else None,
                "removed_at": now if step.get("removed") else None,
            },
        ).scalar_one()
    live = [s for s in steps if not s.get("removed")]
    for position, step in enumerate(live):
        following = live[position + 1]["id"] if position + 1 < len(live) else END

        def target(key: str) -> uuid.UUID | None:
            return None if key == END else ids[key]

        conn.execute(
            _LINK,
            {
                "id": ids[step["id"]],
                "next": None if "condition" in step else target(step.get("next", following)),
                "true_next": target(step["then"]) if "condition" in step else None,
                "false_next": target(step["else"]) if "condition" in step else None,
            },
        )
    return Campaign(campaign_id, list_id, ids)


def add_contact(
    conn: Connection,
    email: str,
    *,
    list_id: uuid.UUID | None = None,
    first_name: str | None = None,
    last_name: str | None = None,
    company: str | None = None,
    city: str | None = None,
    country: str | None = None,
    timezone: str | None = None,
    lead_score: int | None = None,
    status: str = "active",
    tags: list[str] | None = None,
    attributes: dict[str, Any] | None = None,
) -> uuid.UUID:
    contact_id = conn.execute(
        _CONTACT,
        {
            "email": email,
            "first_name": first_name,
            "last_name": last_name,
            "company": company,
            "city": city,
            "country": country,
            "timezone": timezone,
            "lead_score": lead_score,
            "status": status,
            "tags": tags or [],
            "attributes": json.dumps(attributes or {}),
        },
    ).scalar_one()
    if list_id is not None:
        conn.execute(_MEMBER, {"list_id": list_id, "contact_id": contact_id})
    return contact_id


def add_event(
    conn: Connection,
    event_type: str,
    contact_id: uuid.UUID,
    campaign_id: uuid.UUID,
    step_id: uuid.UUID | None,
    at: datetime,
    machine_reason: str | None = None,
) -> None:
    conn.execute(
        _EVENT,
        {
            "machine_reason": machine_reason,
            "event_type": event_type,
            "contact_id": contact_id,
            "campaign_id": campaign_id,
            "step_id": step_id,
            "at": at,
            "dedup_key": uuid.uuid4().hex,
        },
    )


def enrollments(conn: Connection, campaign_id: uuid.UUID) -> dict[str, sa.Row]:
    """The campaign's enrollments by contact email, with the key of the step each stands on."""
    rows = conn.execute(
        sa.text(
            """
            select ct.email, cc.status, s.key as step, cc.next_run_at, cc.steps_completed,
                   cc.exit_reason, cc.completed_at, cc.exited_at, cc.wait_reason,
                   cc.lease_owner, cc.id
            from app.campaign_contacts cc
            join app.contacts ct on ct.id = cc.contact_id
            left join app.campaign_steps s on s.id = cc.current_step_id
            where cc.campaign_id = :id
            """
        ),
        {"id": campaign_id},
    )
    return {row.email: row for row in rows}
