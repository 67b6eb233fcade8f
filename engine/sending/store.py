"""The store seam: claim due enrollments, record messages, advance sequences. SQL only.

What must hold:
* claims are set-based (`FOR UPDATE SKIP LOCKED`) and leased, so any number of workers can
  run at once and a crashed worker's claims fall due again when the lease runs out;
* at most one `sent_emails` row per (enrollment, step), ever: the row is written *before*
  the SMTP conversation, so after a crash a message in `sending` is known to be in doubt and
  is marked `unknown` instead of being sent again.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

CLAIM = sa.text(
    """
    with due as (
        select cc.id
        from app.campaign_contacts cc
        join app.campaigns c on c.id = cc.campaign_id
        where cc.status in ('enrolled', 'active')
          and cc.next_run_at <= :now
          and (cc.lease_expires_at is null or cc.lease_expires_at < :now)
          and c.status = 'active'
        order by cc.next_run_at
        limit :limit
        for update of cc skip locked
    )
    update app.campaign_contacts cc
    set lease_owner = :worker, lease_expires_at = :lease_until, status = 'active',
        started_at = coalesce(cc.started_at, :now), updated_at = :now
    from due where cc.id = due.id
    returning cc.id
    """
)

WORK = sa.text(
    """
    select cc.id as enrollment_id, cc.campaign_id, cc.contact_id,
           s.id as step_id, s.step_order, s.step_type, s.wait_duration, s.wait_until,
           coalesce(s.subject, t.subject) as subject,
           coalesce(s.body_text, t.body_text) as body_text,
           coalesce(s.body_html, t.body_html) as body_html,
           ct.email, ct.first_name, ct.last_name, ct.full_name, ct.company, ct.job_title,
           ct.phone, ct.website, ct.city, ct.country, ct.timezone, ct.attributes,
           snd.id as sender_id, snd.email as sender_email, snd.display_name as sender_name,
           snd.smtp_host, snd.smtp_port, snd.smtp_security, snd.smtp_username,
           snd.smtp_password_env, tn.name as tenant_name,
           exists (
               select from app.suppressions sup
               where sup.tenant_id = cc.tenant_id and lower(sup.email) = lower(ct.email)
           ) as suppressed,
           m.id as message_row_id, m.status as message_status, m.message_id,
           coalesce(m.attempts, 0) as attempts
    from app.campaign_contacts cc
    join app.campaigns c on c.id = cc.campaign_id
    left join app.campaign_steps s on s.id = cc.current_step_id
    join app.contacts ct on ct.id = cc.contact_id
    -- The tenant's name binds its SMTP password variables (senders.check_password_env).
    join app.tenants tn on tn.id = cc.tenant_id
    left join app.templates t on t.id = s.template_id
    left join app.campaign_senders cs on cs.campaign_id = c.id and cs.position = 1
    left join app.sender_accounts snd on snd.id = cs.sender_account_id
    left join app.sent_emails m on m.campaign_contact_id = cc.id and m.step_id = s.id
    where cc.id = any(:ids) and cc.lease_owner = :worker
    order by cc.next_run_at
    """
)

# Written before the SMTP conversation; the unique (enrollment, step) key makes a second
# attempt at creating the same message a no-op.
BEGIN_MESSAGE = sa.text(
    """
    insert into app.sent_emails
        (tenant_id, campaign_contact_id, campaign_id, step_id, contact_id, sender_account_id,
         recipient_email, subject, message_id, status, attempts, queued_at, updated_at)
    values (app.current_tenant_id(), :enrollment_id, :campaign_id, :step_id, :contact_id,
            :sender_id, :recipient, :subject, :message_id, 'sending', 1, :now, :now)
    on conflict (tenant_id, campaign_contact_id, step_id) do nothing
    returning id
    """
)

RETRY_MESSAGE = sa.text(
    """
    update app.sent_emails set status = 'sending', attempts = attempts + 1, updated_at = :now
    where id = :id and status = 'queued'
    returning id
    """
)

MARK_IN_DOUBT = sa.text(
    """
    update app.sent_emails set status = 'unknown', updated_at = :now,
        last_error = 'worker stopped during the SMTP conversation; not resent'
    where id = :id and status = 'sending'
    """
)

# Only a message still `sending` is settled: if our lease ran out and another worker marked
# it `unknown` meanwhile, that verdict stands.
RECORD = sa.text(
    """
    update app.sent_emails
    set status = :status, smtp_response = :response, last_error = :error,
        sent_at = :sent_at, next_attempt_at = :next_attempt_at, updated_at = :now
    where id = :id and status = 'sending'
    """
)

ADVANCE = sa.text(
    """
    with next_step as (
        select (select s.next_step_id from app.campaign_steps s where s.id = :step_id) as id
    )
    update app.campaign_contacts cc
    set current_step_id = coalesce(n.id, cc.current_step_id),
        status = case when n.id is null then 'completed' else 'active' end,
        next_run_at = case when n.id is null then null else :next_run_at end,
        completed_at = case when n.id is null then :now else cc.completed_at end,
        steps_completed = cc.steps_completed + 1,
        last_email_sent_at = coalesce(:sent_at, cc.last_email_sent_at),
        lease_owner = null, lease_expires_at = null, updated_at = :now
    from next_step n
    where cc.id = :enrollment_id and cc.lease_owner = :worker and cc.current_step_id = :step_id
    """
)

RESCHEDULE = sa.text(
    """
    update app.campaign_contacts
    set next_run_at = :next_run_at, lease_owner = null, lease_expires_at = null, updated_at = :now
    where id = :enrollment_id and lease_owner = :worker
    """
)

EXIT = sa.text(
    """
    update app.campaign_contacts
    set status = 'exited', exit_reason = :reason, exited_at = :now, next_run_at = null,
        lease_owner = null, lease_expires_at = null, updated_at = :now
    where id = :enrollment_id and lease_owner = :worker
    """
)

SUPPRESS = sa.text(
    """
    insert into app.suppressions (tenant_id, email, reason, detail, created_at)
    values (app.current_tenant_id(), :email, :reason, :detail, :now)
    on conflict (tenant_id, lower(email)) do nothing
    """
)

MARK_CONTACT = sa.text(
    "update app.contacts set status = :status, updated_at = :now where id = :contact_id"
)

DUE_SUMMARY = sa.text(
    """
    select count(*) as due, min(cc.next_run_at) as oldest
    from app.campaign_contacts cc
    join app.campaigns c on c.id = cc.campaign_id
    where cc.status in ('enrolled', 'active') and cc.next_run_at <= :now
      and (cc.lease_expires_at is null or cc.lease_expires_at < :now)
      and c.status = 'active'
    """
)


def claim(
    conn: Connection, worker: str, now: datetime, lease: timedelta, limit: int
) -> list[sa.Row]:
    ids = [
        row.id
        for row in conn.execute(
            CLAIM, {"worker": worker, "now": now, "lease_until": now + lease, "limit": limit}
        )
    ]
    if not ids:
        return []
    return list(conn.execute(WORK, {"ids": ids, "worker": worker}))


# Every write to a claimed enrollment names the worker that holds its lease: a worker whose
# lease ran out (and was taken over) changes nothing.


def advance(
    conn: Connection,
    enrollment_id: uuid.UUID,
    step_id: uuid.UUID,
    now: datetime,
    worker: str,
    *,
    next_run_at: datetime,
    sent_at: datetime | None = None,
) -> bool:
    """Move past `step_id` to the next step (or complete); release the lease."""
    return (
        conn.execute(
            ADVANCE,
            {
                "enrollment_id": enrollment_id,
                "step_id": step_id,
                "now": now,
                "worker": worker,
                "next_run_at": next_run_at,
                "sent_at": sent_at,
            },
        ).rowcount
        == 1
    )


def reschedule(
    conn: Connection, enrollment_id: uuid.UUID, next_run_at: datetime, now: datetime, worker: str
) -> bool:
    params = {
        "enrollment_id": enrollment_id,
        "next_run_at": next_run_at,
        "now": now,
        "worker": worker,
    }
    return conn.execute(RESCHEDULE, params).rowcount == 1


def exit_enrollment(
    conn: Connection, enrollment_id: uuid.UUID, reason: str, now: datetime, worker: str
) -> bool:
    params = {"enrollment_id": enrollment_id, "reason": reason, "now": now, "worker": worker}
    return conn.execute(EXIT, params).rowcount == 1


def record(
    conn: Connection,
    message_row_id: uuid.UUID,
    status: str,
    now: datetime,
    *,
    response: str | None = None,
    error: str | None = None,
    sent_at: datetime | None = None,
    next_attempt_at: datetime | None = None,
) -> bool:
    """Settle a message that is `sending`; False if it was settled by someone else."""
    params = {
        "id": message_row_id,
        "status": status,
        "now": now,
        "response": response,
        "error": error,
        "sent_at": sent_at,
        "next_attempt_at": next_attempt_at,
    }
    return conn.execute(RECORD, params).rowcount == 1


def begin_message(
    conn: Connection, work: sa.Row, subject: str, message_id: str, now: datetime
) -> uuid.UUID | None:
    """Write the `sending` row for a claimed work item; None if the row exists already."""
    return conn.execute(
        BEGIN_MESSAGE,
        {
            "enrollment_id": work.enrollment_id,
            "campaign_id": work.campaign_id,
            "step_id": work.step_id,
            "contact_id": work.contact_id,
            "sender_id": work.sender_id,
            "recipient": work.email,
            "subject": subject,
            "message_id": message_id,
            "now": now,
        },
    ).scalar()


def due_summary(conn: Connection, now: datetime) -> tuple[int, datetime | None]:
    row = conn.execute(DUE_SUMMARY, {"now": now}).one()
    return row.due, row.oldest
