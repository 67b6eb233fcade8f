"""Campaign definitions: create a campaign with its steps, validate it, launch it."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from engine.ingest.store import ensure_list
from engine.templates import (
    Renderer,
    RenderLimits,
    TemplateRenderError,
    check_syntax,
    contact_context,
)

log = logging.getLogger(__name__)

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
    insert into app.campaigns (tenant_id, name, description, list_id, timezone)
    values (app.current_tenant_id(), :name, :description, :list_id, :timezone)
    returning id
    """
)
_INSERT_SENDER = sa.text(
    """
    insert into app.campaign_senders (tenant_id, campaign_id, sender_account_id, position)
    values (app.current_tenant_id(), :campaign_id, :sender_id, 1)
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
        (tenant_id, campaign_id, step_order, key, name, step_type, subject, body_text, body_html,
         wait_duration)
    values (app.current_tenant_id(), :campaign_id, :step_order, 'step-' || :step_order, :name,
            :step_type, :subject, :body_text, :body_html, :wait)
    """
)
# Steps run in order: each one's next step is the one after it (the last one's is the end).
_LINK_STEPS = sa.text(
    """
    update app.campaign_steps s set next_step_id = n.next_id
    from (
        select id, lead(id) over (order by step_order) as next_id
        from app.campaign_steps where campaign_id = :campaign_id and removed_at is null
    ) n
    where n.id = s.id
    """
)
_CAMPAIGN = sa.text(
    """
    select c.id, c.status, c.list_id,
           exists (select from app.campaign_senders cs where cs.campaign_id = c.id) as has_sender
    from app.campaigns c where c.id = :id
    """
)
# Row-level security hides other tenants' senders, so "not found" covers both cases.
_SENDER_VISIBLE = sa.text("select exists (select from app.sender_accounts where id = :id)")
_STEPS = sa.text(
    """
    select s.step_order, s.step_type, coalesce(s.subject, t.subject) as subject,
           coalesce(s.body_text, t.body_text) as body_text,
           coalesce(s.body_html, t.body_html) as body_html
    from app.campaign_steps s left join app.templates t on t.id = s.template_id
    where s.campaign_id = :id and s.removed_at is null order by s.step_order
    """
)
#: Launch renders every contact of a list up to this size, and a random sample of this many
#: beyond it (and says so).
LAUNCH_SAMPLE_SIZE = 10_000

_LIST_SIZE = sa.text("select count(*) from app.contact_list_members where list_id = :list_id")
# Every contact when the list holds at most :limit, else a random sample of :limit.
_SAMPLE_CONTACTS = sa.text(
    """
    select c.* from app.contacts c
    join app.contact_list_members m on m.contact_id = c.id
    where m.list_id = :list_id
    order by random()
    limit :limit
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
    conn.execute(_LINK_STEPS, {"campaign_id": campaign_id})
    conn.execute(_INSERT_SENDER, {"campaign_id": campaign_id, "sender_id": sender_id})
    return campaign_id


@dataclass(frozen=True)
class LaunchCheck:
    """What validation rendered: every email step against these contacts of the list."""

    email_steps: int
    contacts_checked: int
    contacts_on_list: int

    @property
    def sampled(self) -> bool:
        return self.contacts_checked < self.contacts_on_list

    def summary(self) -> str:
        if self.contacts_on_list == 0:
            return (
                f"{self.email_steps} email step(s) checked for syntax only: the list has no "
                "contacts yet (a contact added later that a template fails for ends only its "
                "own enrollment)"
            )
        if self.sampled:
            return (
                f"{self.email_steps} email step(s) rendered: checked "
                f"{self.contacts_checked:,} of {self.contacts_on_list:,} contacts (a sample)"
            )
        return (
            f"{self.email_steps} email step(s) rendered: checked all "
            f"{self.contacts_checked:,} contacts"
        )


def validate_campaign(
    conn: Connection,
    campaign_id: uuid.UUID,
    *,
    limits: RenderLimits | None = None,
    sample_size: int = LAUNCH_SAMPLE_SIZE,
) -> LaunchCheck:
    """Refuse a campaign that could fail halfway: unsupported steps, unrenderable templates.

    Every email step's parts render against every contact of the list (a random sample of
    `sample_size` when the list is larger), within the same limits as at send time; the first
    failure is a `CampaignError` naming the step, the part and the contact.
    """
    if sample_size < 1:
        raise ValueError("sample_size must be >= 1")
    campaign = conn.execute(_CAMPAIGN, {"id": campaign_id}).one_or_none()
    if campaign is None:
        raise CampaignError(f"no campaign with id {campaign_id}")
    if not campaign.has_sender:
        raise CampaignError("the campaign has no sender account")
    steps = conn.execute(_STEPS, {"id": campaign_id}).all()
    if not steps:
        raise CampaignError("the campaign has no steps")
    email_steps = []
    for step in steps:
        where = f"step {step.step_order} ({step.step_type})"
        if step.step_type not in RUNNABLE_STEP_TYPES:
            raise CampaignError(f"{where}: step type {step.step_type!r} is not supported yet")
        if step.step_type != "email":
            continue
        email_steps.append(step)
        for part in ("subject", "body_text", "body_html"):
            source = getattr(step, part)
            if source is not None:
                try:
                    check_syntax(source, where=f"{where} {part}")
                except TemplateRenderError as exc:
                    raise CampaignError(str(exc)) from None

    on_list = (
        0
        if campaign.list_id is None
        else conn.execute(_LIST_SIZE, {"list_id": campaign.list_id}).scalar_one()
    )
    contacts = (
        conn.execute(_SAMPLE_CONTACTS, {"list_id": campaign.list_id, "limit": sample_size}).all()
        if on_list
        else []
    )
    check = LaunchCheck(len(email_steps), len(contacts), max(on_list, len(contacts)))
    if contacts and email_steps:
        with Renderer(limits) as renderer:
            for contact in contacts:
                context = contact_context(contact._mapping)
                for step in email_steps:
                    parts = {p: getattr(step, p) for p in ("subject", "body_text", "body_html")}
                    try:
                        renderer.render(
                            parts, context, where=f"step {step.step_order} ({step.step_type})"
                        )
                    except TemplateRenderError as exc:
                        sample = f"; {check.summary()}" if check.sampled else ""
                        raise CampaignError(f"{exc} (contact {context['email']}{sample})") from None
    return check


def launch_campaign(
    conn: Connection,
    campaign_id: uuid.UUID,
    now: datetime,
    *,
    limits: RenderLimits | None = None,
    sample_size: int = LAUNCH_SAMPLE_SIZE,
) -> LaunchCheck:
    """Validate, then activate; returns (and logs) what validation checked."""
    check = validate_campaign(conn, campaign_id, limits=limits, sample_size=sample_size)
    conn.execute(_ACTIVATE, {"id": campaign_id, "now": now})
    log.info("campaign %s launched: %s", campaign_id, check.summary())
    return check
