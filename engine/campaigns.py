"""Campaign definitions: create a campaign with its steps, validate it, launch it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from engine.ingest.store import ensure_list
from engine.templates import TemplateRenderError, check_syntax, contact_context, render

#: Step types the engine runs today; `condition` and `action` are accepted by the schema
#: but a campaign using them is refused at launch until the engine supports them.
RUNNABLE_STEP_TYPES = ("email", "wait")


@dataclass(frozen=True)
class Step:
    step_type: str
    name: str | None = None
    subject: str | None = None
    body_text: str | None = None
    body_html: str | None = None
    wait: timedelta | None = None


class CampaignError(ValueError):
    pass


_INSERT_CAMPAIGN = sa.text(
    """
    insert into app.campaigns (tenant_id, name, description, list_id, sender_account_id, timezone)
    values (app.current_tenant_id(), :name, :description, :list_id, :sender_id, :timezone)
    returning id
    """
)
_INSERT_SETTINGS = sa.text(
    """
    insert into app.campaign_settings
        (campaign_id, tenant_id, send_window_start, send_window_end, send_days, daily_limit)
    values (:campaign_id, app.current_tenant_id(), :window_start, :window_end, :send_days,
            :daily_limit)
    """
)
_INSERT_STEP = sa.text(
    """
    insert into app.campaign_steps
        (tenant_id, campaign_id, step_order, name, step_type, subject, body_text, body_html,
         wait_duration)
    values (app.current_tenant_id(), :campaign_id, :step_order, :name, :step_type, :subject,
            :body_text, :body_html, :wait)
    """
)
_CAMPAIGN = sa.text(
    "select id, status, list_id, sender_account_id from app.campaigns where id = :id"
)
# Row-level security hides other tenants' senders, so "not found" covers both cases.
_SENDER_VISIBLE = sa.text("select exists (select from app.sender_accounts where id = :id)")
_STEPS = sa.text(
    """
    select s.step_order, s.step_type, coalesce(s.subject, t.subject) as subject,
           coalesce(s.body_text, t.body_text) as body_text,
           coalesce(s.body_html, t.body_html) as body_html
    from app.campaign_steps s left join app.templates t on t.id = s.template_id
    where s.campaign_id = :id order by s.step_order
    """
)
_SAMPLE_CONTACTS = sa.text(
    """
    select c.* from app.contacts c
    join app.contact_list_members m on m.contact_id = c.id
    where m.list_id = :list_id
    limit 1000
    """
)
_ACTIVATE = sa.text(
    """
    update app.campaigns set status = 'active', launched_at = :now, updated_at = :now
    where id = :id
    """
)


def create_campaign(
    conn: Connection,
    name: str,
    now: datetime,
    *,
    list_name: str,
    sender_id: uuid.UUID,
    steps: list[Step],
    description: str | None = None,
    timezone: str = "UTC",
    send_window: tuple[str, str] = ("00:00", "23:59:59"),
    send_days: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7),
    daily_limit: int = 500,
) -> uuid.UUID:
    """Create a draft campaign of the transaction's tenant for list `list_name`.

    The list is created if it does not exist yet, so a campaign can be defined before the
    contacts for it are uploaded.
    """
    if not steps:
        raise CampaignError(f"campaign {name!r}: a campaign needs at least one step")
    if not conn.execute(_SENDER_VISIBLE, {"id": sender_id}).scalar():
        raise CampaignError(
            f"campaign {name!r}: sender account {sender_id} does not exist in this tenant"
        )
    list_id = ensure_list(conn, list_name, now)
    campaign_id = conn.execute(
        _INSERT_CAMPAIGN,
        {
            "name": name,
            "description": description,
            "list_id": list_id,
            "sender_id": sender_id,
            "timezone": timezone,
        },
    ).scalar_one()
    conn.execute(
        _INSERT_SETTINGS,
        {
            "campaign_id": campaign_id,
            "window_start": send_window[0],
            "window_end": send_window[1],
            "send_days": list(send_days),
            "daily_limit": daily_limit,
        },
    )
    conn.execute(
        _INSERT_STEP,
        [
            {
                "campaign_id": campaign_id,
                "step_order": order,
                "name": step.name,
                "step_type": step.step_type,
                "subject": step.subject,
                "body_text": step.body_text,
                "body_html": step.body_html,
                "wait": step.wait,
            }
            for order, step in enumerate(steps, start=1)
        ],
    )
    return campaign_id


def validate_campaign(conn: Connection, campaign_id: uuid.UUID) -> None:
    """Refuse a campaign that could fail halfway: unsupported steps, unrenderable templates."""
    campaign = conn.execute(_CAMPAIGN, {"id": campaign_id}).one_or_none()
    if campaign is None:
        raise CampaignError(f"no campaign with id {campaign_id}")
    if campaign.sender_account_id is None:
        raise CampaignError("the campaign has no sender account")
    steps = conn.execute(_STEPS, {"id": campaign_id}).all()
    if not steps:
        raise CampaignError("the campaign has no steps")
    contacts = [
        dict(row._mapping) for row in conn.execute(_SAMPLE_CONTACTS, {"list_id": campaign.list_id})
    ]
    for step in steps:
        where = f"step {step.step_order} ({step.step_type})"
        if step.step_type not in RUNNABLE_STEP_TYPES:
            raise CampaignError(f"{where}: step type {step.step_type!r} is not supported yet")
        if step.step_type != "email":
            continue
        for part in ("subject", "body_text", "body_html"):
            source = getattr(step, part)
            if source is None:
                continue
            try:
                check_syntax(source, where=f"{where} {part}")
            except TemplateRenderError as exc:
                raise CampaignError(str(exc)) from None
            # With contacts on the list, every one of them must render (variables included);
            # an empty list can only be checked for syntax.
            for contact in contacts:
                context = contact_context(contact)
                try:
                    render(source, context, where=f"{where} {part}")
                except TemplateRenderError as exc:
                    raise CampaignError(f"{exc} (contact {context['email']})") from None


def launch_campaign(conn: Connection, campaign_id: uuid.UUID, now: datetime) -> None:
    validate_campaign(conn, campaign_id)
    conn.execute(_ACTIVATE, {"id": campaign_id, "now": now})
