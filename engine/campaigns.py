"""Campaign lifecycle: validate, launch, pause, resume, and the status an operator reads.

Definitions come from campaign files (`engine.campaign_files`); `create_campaign` builds a
simple in-order campaign from Python (the demo, tests, benchmarks).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from engine.ingest.store import ensure_list
from engine.sending import store
from engine.sequence import steps
from engine.templates import (
    Renderer,
    RenderLimits,
    TemplateRenderError,
    check_syntax,
    contact_context,
)
from engine.tenants import current_tenant_name, penguin_command, shell_word

log = logging.getLogger(__name__)

#: Step types the engine runs.
RUNNABLE_STEP_TYPES = ("email", "wait", "condition", "action")


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
    values (app.current_tenant_id(), :campaign_id, :step_order, cast(:step_order as text), :name,
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
    select c.id, c.name, c.status, c.list_id, c.approval_required,
           exists (select from app.campaign_senders cs where cs.campaign_id = c.id) as has_sender
    from app.campaigns c where c.id = :id
    """
)
# Row-level security hides other tenants' senders, so "not found" covers both cases.
_SENDER_VISIBLE = sa.text("select exists (select from app.sender_accounts where id = :id)")
_STEPS = sa.text(
    """
    select s.step_order, s.key, s.step_type, coalesce(s.subject, t.subject) as subject,
           coalesce(s.body_text, t.body_text) as body_text,
           coalesce(s.body_html, t.body_html) as body_html, s.variants
    from app.campaign_steps s left join app.templates t on t.id = s.template_id
    where s.campaign_id = :id and s.removed_at is null order by s.step_order
    """
)


def _email_parts(step: sa.Row) -> list[tuple[str, dict[str, str | None]]]:
    """(where, parts) of each text an email step can send: itself, or each of its variants."""
    where = f"step {step.key} ({step.step_type})"
    if step.variants:
        return [
            (
                f"{where} variant {n}",
                {
                    "subject": v.get("subject"),
                    "body_text": v.get("text"),
                    "body_html": v.get("html"),
                },
            )
            for n, v in enumerate(step.variants, start=1)
        ]
    return [
        (where, {"subject": step.subject, "body_text": step.body_text, "body_html": step.body_html})
    ]


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
# `scheduled` until its start for a campaign whose strategy is `scheduled` (the engine pass
# activates it then); `active` otherwise.
_ACTIVATE = sa.text(
    """
    update app.campaigns
    set status = case when send_strategy = 'scheduled' and start_at > :now
                      then 'scheduled' else 'active' end,
        launched_at = coalesce(launched_at, :now), completed_at = null, updated_at = :now
    where id = :id
    returning status
    """
)
_BY_NAME = sa.text(
    "select id, name, status, approval_required, spec_sha256 from app.campaigns where name = :name"
)
_SET_STATUS = sa.text(
    """
    update app.campaigns set status = :status, updated_at = :now
    where id = :id and status = any(:allowed)
    returning status
    """
)
_RESUME = sa.text(
    """
    update app.campaigns
    set status = case when send_strategy = 'scheduled' and start_at > :now
                      then 'scheduled' else 'active' end,
        updated_at = :now
    where id = :id and status = 'paused'
    returning status
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
    with Renderer(limits) as renderer:
        return _validate_steps(conn, campaign, steps, renderer, sample_size)


def _validate_steps(
    conn: Connection, campaign: sa.Row, steps: list, renderer: Renderer, sample_size: int
) -> LaunchCheck:
    """`validate_campaign` once the campaign has steps: every template compiles, then renders
    for the sampled contacts, all in `renderer`'s worker."""
    email_steps = []
    texts: list[tuple[str, dict[str, str | None]]] = []
    for step in steps:
        if step.step_type not in RUNNABLE_STEP_TYPES:
            raise CampaignError(f"step {step.key}: step type {step.step_type!r} is not supported")
        if step.step_type != "email":
            continue
        email_steps.append(step)
        for where, parts in _email_parts(step):
            texts.append((where, parts))
            for part, source in parts.items():
                if source is not None:
                    try:
                        check_syntax(source, where=f"{where} {part}", renderer=renderer)
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
        for contact in contacts:
            context = contact_context(contact._mapping)
            for where, parts in texts:
                try:
                    renderer.render(parts, context, where=where)
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
    """Validate, then activate and enroll the list's members at once; returns (and logs) what
    validation checked.

    A campaign that needs approval launches only with an approval of its current definition.
    """
    campaign = conn.execute(_CAMPAIGN, {"id": campaign_id}).one_or_none()
    if campaign is None:
        raise CampaignError(f"no campaign with id {campaign_id}")
    if campaign.status != "draft":
        resume = penguin_command(
            f"campaign resume {shell_word(campaign.name)}", current_tenant_name(conn)
        )
        hint = f" ({resume})" if campaign.status == "paused" else ""
        raise CampaignError(
            f"the campaign is {campaign.status}; only a draft can be launched{hint}"
        )
    if campaign.approval_required:
        from engine.campaign_files import approval_state

        approved, detail = approval_state(conn, campaign_id)
        if not approved:
            raise CampaignError(f"the campaign needs an approval before it launches: {detail}")
    check = validate_campaign(conn, campaign_id, limits=limits, sample_size=sample_size)
    status = conn.execute(_ACTIVATE, {"id": campaign_id, "now": now}).scalar_one()
    enrolled = steps.enroll(conn, now) if status == "active" else 0
    log.info(
        "campaign %s launched (%s, %s enrolled): %s",
        campaign_id,
        status,
        enrolled,
        check.summary(),
    )
    return check


def campaign_named(conn: Connection, name: str) -> sa.Row:
    """The tenant's campaign `name`; `CampaignError` naming it when there is none."""
    row = conn.execute(_BY_NAME, {"name": name}).one_or_none()
    if row is None:
        raise CampaignError(f"no campaign named {name!r} in this tenant")
    return row


def pause_campaign(conn: Connection, campaign_id: uuid.UUID, now: datetime) -> str:
    """Stop sending before the next message, including in a pass already under way (each
    message is marked `sending` only while its campaign is active)."""
    status = conn.execute(
        _SET_STATUS,
        {"id": campaign_id, "status": "paused", "now": now, "allowed": ["active", "scheduled"]},
    ).scalar()
    if status is None:
        raise _refused(conn, campaign_id, "only an active one can be paused")
    return status


def resume_campaign(conn: Connection, campaign_id: uuid.UUID, now: datetime) -> str:
    status = conn.execute(_RESUME, {"id": campaign_id, "now": now}).scalar()
    if status is None:
        raise _refused(conn, campaign_id, "only a paused one can be resumed")
    return status


def _refused(conn: Connection, campaign_id: uuid.UUID, rule: str) -> CampaignError:
    """Why a status change found nothing: the campaign's status, or that the tenant has no such
    campaign (row-level security hides another tenant's)."""
    current = conn.execute(_CAMPAIGN, {"id": campaign_id}).one_or_none()
    if current is None:
        return CampaignError(f"this tenant has no campaign {campaign_id}")
    return CampaignError(f"the campaign is {current.status}; {rule}")


_STATUS_STEPS = sa.text(
    """
    select s.key, s.step_type, s.step_order, cc.status, count(cc.id) as enrollments
    from app.campaign_steps s
    left join app.campaign_contacts cc on cc.current_step_id = s.id
    where s.campaign_id = :id and (s.removed_at is null or cc.id is not null)
    group by s.key, s.step_type, s.step_order, cc.status
    order by s.step_order nulls last, s.key
    """
)
_STATUS_TOTALS = sa.text(
    """
    select c.name, c.status, c.timezone, st.daily_limit,
           (select min(cc.next_run_at) from app.campaign_contacts cc
            where cc.campaign_id = c.id and cc.status in ('enrolled', 'active')) as next_due
    from app.campaigns c join app.campaign_settings st on st.campaign_id = c.id
    where c.id = :id
    """
)
_STATUS_WAITING = sa.text(
    """
    select coalesce(cc.wait_reason, case s.step_type when 'wait' then 'wait step'
                                     else 'due' end) as reason,
           count(*) as enrollments, min(cc.next_run_at) as until
    from app.campaign_contacts cc join app.campaign_steps s on s.id = cc.current_step_id
    where cc.campaign_id = :id and cc.status in ('enrolled', 'active')
    group by 1 order by 3
    """
)
_STATUS_SENDERS = sa.text(
    f"""
    select sa.email, sa.daily_limit, sa.is_active,
           (select count(*) from app.sent_emails m
            where m.tenant_id = sa.tenant_id and m.sender_account_id = sa.id
              and {store.ON_SENDER_DAY}
              and {store.COUNTS_AGAINST_LIMITS}) as sent_today
    from app.campaign_senders cs join app.sender_accounts sa on sa.id = cs.sender_account_id
    where cs.campaign_id = :id
    order by cs.position
    """
)


@dataclass(frozen=True)
class CampaignStatus:
    """What `penguin campaign status` shows."""

    name: str
    status: str
    timezone: str
    daily_limit: int
    sent_today: int
    next_due: datetime | None
    #: (step key, step type, enrollment status, count), in step order.
    steps: list[tuple[str, str, str | None, int]]
    #: (why, enrollments, earliest time) of enrollments still to run.
    waiting: list[tuple[str, int, datetime | None]]
    #: (sender, sent today, daily limit, active) in rotation order.
    senders: list[tuple[str, int, int, bool]]


def campaign_status(conn: Connection, campaign_id: uuid.UUID, now: datetime) -> CampaignStatus:
    params = {"id": campaign_id, "now": now}
    totals = conn.execute(_STATUS_TOTALS, params).one()
    return CampaignStatus(
        name=totals.name,
        status=totals.status,
        timezone=totals.timezone,
        daily_limit=totals.daily_limit,
        sent_today=store.campaign_sends_today(conn, {campaign_id: totals.timezone}, now)[
            campaign_id
        ],
        next_due=totals.next_due,
        steps=[
            (r.key, r.step_type, r.status, r.enrollments)
            for r in conn.execute(_STATUS_STEPS, params)
        ],
        waiting=[(r.reason, r.enrollments, r.until) for r in conn.execute(_STATUS_WAITING, params)],
        senders=[
            (r.email, r.sent_today, r.daily_limit, r.is_active)
            for r in conn.execute(_STATUS_SENDERS, params)
        ],
    )
