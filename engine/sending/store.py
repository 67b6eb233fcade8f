"""The store seam of the email steps: claim due emails, record messages, move enrollments. SQL only.

What must hold:
* claims are set-based (`FOR UPDATE SKIP LOCKED`) and leased, so any number of workers can
  run at once and a crashed worker's claims fall due again when the lease runs out;
* at most one `sent_emails` row per (enrollment, step), ever. The row is written `queued` when
  the email is claimed (it reserves the sender's and the campaign's counts), goes to `sending`
  just before its own SMTP conversation, and is settled right after it: after a crash only the
  conversations under way are left `sending`, and those are marked `unknown`, never resent;
* locks are taken in one order, enrollment row before message row, by every transaction that
  takes both, so two workers meeting after a lease ran out wait for each other, never deadlock
  (recording a delivered message takes its row alone; its enrollment moves on afterwards, in a
  transaction of its own).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from engine.sequence import rules

#: Whether message `m` takes a daily limit's count: every row from the moment it is queued,
#: except one that failed before any SMTP conversation (engine.sequence.rules). Every count
#: against a limit -- the engine's, the forecast's, `status` and `list` -- uses this.
COUNTS_AGAINST_LIMITS = "not (m.status = 'failed' and m.attempts = 0)"
#: Whether message `m` was queued on `:now`'s UTC day, a sender's day: from its midnight to the
#: next, so that messages stamped later (a pass run with a later `--now`) are not today's.
ON_SENDER_DAY = (
    "m.queued_at >= (date_trunc('day', cast(:now as timestamptz) at time zone 'UTC') at time "
    "zone 'UTC') and m.queued_at < (date_trunc('day', cast(:now as timestamptz) at time zone "
    "'UTC') at time zone 'UTC') + interval '1 day'"
)
#: Each campaign's messages of one local day that count against its daily limit (`:ids`, with
#: the day's UTC bounds in `:starts` and `:ends`).
_CAMPAIGN_SENDS = sa.text(
    f"""
    select d.id, (
        select count(*) from app.sent_emails m
        where m.tenant_id = app.current_tenant_id() and m.campaign_id = d.id
          and m.queued_at >= d.day_start and m.queued_at < d.day_end
          and {COUNTS_AGAINST_LIMITS}
    ) as sent
    from unnest(
        cast(:ids as uuid[]), cast(:starts as timestamptz[]), cast(:ends as timestamptz[])
    ) as d(id, day_start, day_end)
    """
)


def campaign_sends_today(
    conn: Connection, timezones: Mapping[uuid.UUID, str | None], now: datetime
) -> dict[uuid.UUID, int]:
    """Each campaign's "sent today" (campaign id → its time zone's name; in the caller's tenant
    transaction): its messages queued on `now`'s local day in the campaign's time zone
    (`rules.campaign_timezone`: UTC when the name is not a zone), from local midnight to the
    next (23 or 25 hours on a day the clocks change), that count against limits.

    The one definition: the engine's campaign daily limit, `campaign status`, `campaign list`
    and the forecast all count with it, so they agree whatever `now` earlier passes used.
    """
    ids, starts, ends = [], [], []
    for campaign_id, name in timezones.items():
        tz = rules.campaign_timezone(name)
        start, end = rules.day_bounds(rules.local_day(now, tz), tz)
        ids.append(campaign_id)
        starts.append(start)
        ends.append(end)
    if not ids:
        return {}
    params = {"ids": ids, "starts": starts, "ends": ends}
    return {row.id: row.sent for row in conn.execute(_CAMPAIGN_SENDS, params)}


#: Due enrollments standing on an email step, oldest first, locked for this transaction.
CLAIM = sa.text(
    """
    with due as (
        select cc.id
        from app.campaign_contacts cc
        join app.campaigns c on c.id = cc.campaign_id
        join app.campaign_steps s on s.id = cc.current_step_id
        where cc.status in ('enrolled', 'active')
          and cc.next_run_at <= :now
          and (cc.lease_expires_at is null or cc.lease_expires_at <= :now)
          and c.status = 'active'
          and s.step_type = 'email'
        order by cc.next_run_at, cc.contact_id
        limit :limit
        for update of cc skip locked
    )
    select cc.id as enrollment_id, cc.campaign_id, cc.contact_id, cc.next_run_at,
           s.id as step_id, s.key as step_key, s.step_order, s.variants,
           s.sender_account_id as step_sender_id,
           coalesce(s.subject, t.subject) as subject,
           coalesce(s.body_text, t.body_text) as body_text,
           coalesce(s.body_html, t.body_html) as body_html,
           ct.email, ct.first_name, ct.last_name, ct.full_name, ct.company, ct.job_title,
           ct.phone, ct.website, ct.city, ct.country, ct.timezone, ct.lead_score, ct.tags,
           ct.attributes, ct.status as contact_status,
           exists (
               select from app.suppressions sup
               where sup.tenant_id = cc.tenant_id and lower(sup.email) = lower(ct.email)
           ) as suppressed,
           m.id as message_row_id, m.status as message_status, m.message_id,
           m.sender_account_id as message_sender_id, m.variant as message_variant,
           m.sent_at as message_sent_at, coalesce(m.attempts, 0) as attempts
    from due
    join app.campaign_contacts cc on cc.id = due.id
    join app.campaign_steps s on s.id = cc.current_step_id
    join app.contacts ct on ct.id = cc.contact_id
    left join app.templates t on t.id = s.template_id
    left join app.sent_emails m
        on m.tenant_id = cc.tenant_id and m.campaign_contact_id = cc.id and m.step_id = s.id
    order by cc.next_run_at, cc.contact_id
    """
)

#: The campaigns of a claimed batch, locked so that two claimers count their limits in turn
#: (`campaign_sends_today`, once they are locked).
CAMPAIGNS = sa.text(
    """
    select c.id, c.name, c.timezone, c.send_strategy, c.start_at, c.end_at, c.from_name,
           c.reply_to, st.send_window_start, st.send_window_end, st.send_days, st.daily_limit,
           st.track_opens, st.track_clicks,
           array(
               select cs.sender_account_id from app.campaign_senders cs
               where cs.campaign_id = c.id order by cs.position
           ) as senders
    from app.campaigns c
    join app.campaign_settings st on st.campaign_id = c.id
    where c.id = any(:ids)
    order by c.id
    for update of c
    """
)

#: Sender accounts with their messages of the UTC day and their latest message, locked in id
#: order (the same order in every claimer).
SENDERS = sa.text(
    f"""
    select sa.id, sa.email, sa.display_name, sa.smtp_host, sa.smtp_port, sa.smtp_security,
           sa.smtp_username, sa.smtp_password_env, sa.daily_limit, sa.min_gap_seconds,
           sa.is_active,
           (
               select count(*) from app.sent_emails m
               where m.tenant_id = sa.tenant_id and m.sender_account_id = sa.id
                 and {ON_SENDER_DAY} and {COUNTS_AGAINST_LIMITS}
           ) as sent_today,
           (
               select max(m.queued_at) from app.sent_emails m
               where m.tenant_id = sa.tenant_id and m.sender_account_id = sa.id
           ) as last_queued_at
    from app.sender_accounts sa
    where sa.id = any(:ids)
    order by sa.id
    for update of sa
    """
)

#: The local times of each contact's opens (for `optimized` campaigns' usual open hour).
OPENS = sa.text(
    """
    select contact_id, array_agg(occurred_at order by occurred_at) as opens
    from app.email_events
    where tenant_id = app.current_tenant_id() and event_type = 'open' and not is_machine
      and contact_id = any(:contact_ids)
    group by contact_id
    """
)

#: Analyze the engine's tables that changed much since their last analysis (owner's rights;
#: a no-op otherwise): plans of a campaign's first pass on a new server, made on statistics of
#: empty tables, read every message of the tenant at each mark.
REFRESH_STATISTICS = sa.text("select app.refresh_statistics()")

TENANT_NAME = sa.text("select name from app.tenants where id = app.current_tenant_id()")

# Statements over a list of ids name their rows by `id = any(:ids)` as well as joining the list
# (for the values that go with each id): the planner then reaches them through the key,
# whatever the statistics say. Joined to the list alone, a table whose statistics still said
# "a few rows" (a campaign's first pass, a new tenant) was scanned for all of the tenant's rows
# at every mark and settlement, so each message cost as much as the pass so far.
DEFER = sa.text(
    """
    update app.campaign_contacts cc
    set next_run_at = d.until, wait_reason = d.reason, status = 'active',
        started_at = coalesce(cc.started_at, :now), lease_owner = null, lease_expires_at = null,
        updated_at = :now
    from unnest(cast(:ids as uuid[]), cast(:untils as timestamptz[]), cast(:reasons as text[]))
        as d (id, until, reason)
    where cc.id = any(cast(:ids as uuid[])) and cc.id = d.id
    """
)

EXIT_MANY = sa.text(
    """
    update app.campaign_contacts cc
    set status = 'exited', exit_reason = d.reason, exited_at = :now, next_run_at = null,
        wait_reason = null, lease_owner = null, lease_expires_at = null, updated_at = :now
    from unnest(cast(:ids as uuid[]), cast(:reasons as text[])) as d (id, reason)
    where cc.id = any(cast(:ids as uuid[])) and cc.id = d.id
    """
)

LEASE = sa.text(
    """
    update app.campaign_contacts cc
    set lease_owner = :worker, lease_expires_at = :lease_until, status = 'active',
        started_at = coalesce(cc.started_at, :now), wait_reason = null, updated_at = :now
    where cc.id = any(:ids)
    """
)

#: The message rows of a claimed batch, `queued`: they take the sender's and the campaign's
#: counts at once. The unique (enrollment, step) key makes a second one impossible.
QUEUE_MESSAGES = sa.text(
    """
    insert into app.sent_emails
        (tenant_id, campaign_contact_id, campaign_id, step_id, contact_id, sender_account_id,
         recipient_email, message_id, variant, status, attempts, queued_at, updated_at)
    select app.current_tenant_id(), q.enrollment_id, q.campaign_id, q.step_id, q.contact_id,
           q.sender_id, q.recipient, q.message_id, q.variant, 'queued', 0, :now, :now
    from unnest(cast(:enrollment_ids as uuid[]), cast(:campaign_ids as uuid[]),
                cast(:step_ids as uuid[]), cast(:contact_ids as uuid[]),
                cast(:sender_ids as uuid[]), cast(:recipients as text[]),
                cast(:message_ids as text[]), cast(:variants as text[]))
        as q (enrollment_id, campaign_id, step_id, contact_id, sender_id, recipient, message_id,
              variant)
    on conflict (tenant_id, campaign_contact_id, step_id) do nothing
    returning id, campaign_contact_id
    """
)

MARK_IN_DOUBT = sa.text(
    """
    update app.sent_emails set status = 'unknown', updated_at = :now,
        last_error = 'worker stopped during the SMTP conversation; not resent'
    where id = :id and status = 'sending'
    """
)

#: Just before their SMTP conversations (a group of at most the courier's concurrency): only
#: messages still queued, of enrollments this worker holds, of campaigns still active, to
#: addresses not suppressed meanwhile. A campaign paused during a run stops before its next
#: message. `marked` holds the ids marked.
_MARK_SENDING = """marked as (
    update app.sent_emails m
    set status = 'sending', subject = a.subject, attempts = m.attempts + 1, updated_at = :now
    from unnest(cast(:ids as uuid[]), cast(:subjects as text[])) as a(id, subject)
    where m.id = any(cast(:ids as uuid[])) and m.id = a.id and m.status = 'queued'
      -- A scalar subquery, run for each of the group's messages only: as an EXISTS the planner
      -- may turn it into a join from every enrollment the worker holds (the whole claim) when
      -- the statistics predate the claim, and each mark then costs the batch.
      and coalesce((
          select cc.lease_owner = :worker and c.status = 'active'
          from app.campaign_contacts cc join app.campaigns c on c.id = cc.campaign_id
          where cc.id = m.campaign_contact_id
      ), false)
      and not exists (
          select from app.suppressions sup
          where sup.tenant_id = m.tenant_id and lower(sup.email) = lower(m.recipient_email)
      )
    returning m.id
)"""
MARK_SENDING = sa.text(f"with {_MARK_SENDING} select id from marked")

#: Taken first by every transaction that settles a message, as the claim does.
LOCK_ENROLLMENT = sa.text("select id from app.campaign_contacts where id = :id for update")
#: The same for a group of settlements, in id order (two groups never wait for each other).
LOCK_ENROLLMENTS = sa.text(
    "select id from app.campaign_contacts where id = any(:ids) order by id for update"
)

# Only a message still `sending` is settled: if our lease ran out and another worker marked
# it `unknown` meanwhile, that verdict stands.
RECORD = sa.text(
    """
    update app.sent_emails
    set status = :status, smtp_response = :response, last_error = :error,
        sent_at = :sent_at, next_attempt_at = :next_attempt_at, updated_at = :now,
        attempts = attempts - :refund
    where id = :id and status = 'sending'
    """
)

FAIL_UNSENT = sa.text(
    """
    update app.sent_emails set status = 'failed', last_error = :error, updated_at = :now
    where id = :id and status = 'queued'
    """
)

NOTE_UNSENT = sa.text(
    """
    update app.sent_emails
    set attempts = attempts + :attempts, last_error = :error, next_attempt_at = :next_attempt_at,
        updated_at = :now
    where id = :id and status = 'queued'
    """
)

# Moving past a step, entering the next (a wait's time counts from now) or completing: `n` is
# the next step (null: none), `cc` the enrollment.
_ADVANCE_SET = """
    current_step_id = coalesce(n.id, cc.current_step_id),
    status = case when n.id is null then 'completed' else 'active' end,
    next_run_at = case
        when n.id is null then null
        -- Exact elapsed time, as engine.sequence.steps and rules.wait_resume count it.
        when n.step_type = 'wait' then coalesce(
            :now + extract(epoch from n.wait_duration) * interval '1 second',
            greatest(:now, n.wait_until))
        else :now end,
    completed_at = case when n.id is null then :now else cc.completed_at end,
    steps_completed = cc.steps_completed + 1,
    wait_reason = null, lease_owner = null, lease_expires_at = null, updated_at = :now"""

#: Move past `step_id`, entering the next step (a wait's time counts from now) or completing.
ADVANCE = sa.text(
    f"""
    update app.campaign_contacts cc
    set {_ADVANCE_SET}, last_email_sent_at = coalesce(:sent_at, cc.last_email_sent_at)
    from app.campaign_steps s
    left join app.campaign_steps n on n.id = s.next_step_id
    where s.id = :step_id
      and cc.id = :enrollment_id and cc.lease_owner = :worker and cc.current_step_id = :step_id
    """
)

#: A group of messages delivered (`:sent_ids`, `:responses`): each one still `sending` becomes
#: `sent` at :now. Only the message rows: their enrollments move on at the end of the batch
#: (ADVANCE_SENT), so a settlement takes no enrollment lock and waits for none. A message
#: another worker settled meanwhile (our lease ran out) keeps that verdict. `sent` holds the
#: ids recorded.
_RECORD_SENT = """sent as (
    update app.sent_emails m
    set status = 'sent', smtp_response = a.response, last_error = null, sent_at = :now,
        next_attempt_at = null, updated_at = :now
    from unnest(cast(:sent_ids as uuid[]), cast(:responses as text[])) as a(id, response)
    where m.id = any(cast(:sent_ids as uuid[])) and m.id = a.id and m.status = 'sending'
    returning m.id
)"""
RECORD_SENT = sa.text(f"with {_RECORD_SENT} select id from sent")
#: A group's delivered messages recorded and its next messages marked, in one statement: both
#: touch message rows only (distinct ones), so the order between them does not matter.
RECORD_SENT_AND_MARK = sa.text(
    f"""
    with {_RECORD_SENT}, {_MARK_SENDING}
    select 'sent' as what, id from sent union all select 'marked', id from marked
    """
)

#: The end of a batch: of `:enrollment_ids`, those this worker still holds whose message of
#: their current step was delivered move on (a wait's time counts from now). One left behind
#: (the worker died first) moves on when the next pass claims it and finds its message sent.
ADVANCE_SENT = sa.text(
    f"""
    update app.campaign_contacts cc
    set {_ADVANCE_SET}, last_email_sent_at = m.sent_at
    from app.sent_emails m
    join app.campaign_steps s on s.id = m.step_id
    left join app.campaign_steps n on n.id = s.next_step_id
    where cc.id = any(cast(:enrollment_ids as uuid[])) and cc.lease_owner = :worker
      and m.tenant_id = cc.tenant_id and m.campaign_contact_id = cc.id
      and m.step_id = cc.current_step_id and m.status = 'sent'
    """
)

RESCHEDULE = sa.text(
    """
    update app.campaign_contacts
    set next_run_at = :next_run_at, wait_reason = :reason, lease_owner = null,
        lease_expires_at = null, updated_at = :now
    where id = :enrollment_id and lease_owner = :worker
    """
)

#: Claimed but not sent (the campaign was paused, the address suppressed meanwhile): released,
#: due again now; the next pass decides.
RELEASE = sa.text(
    """
    update app.campaign_contacts
    set lease_owner = null, lease_expires_at = null, updated_at = :now
    where id = any(:ids) and lease_owner = :worker
    """
)

EXIT = sa.text(
    """
    update app.campaign_contacts
    set status = 'exited', exit_reason = :reason, exited_at = :now, next_run_at = null,
        wait_reason = null, lease_owner = null, lease_expires_at = null, updated_at = :now
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

#: Messages a stopped worker left `sending` (its lease ran out mid-conversation): in doubt,
#: never resent. Marked before anything else moves their enrollments, so one that exits
#: (the contact unsubscribed or replied, the campaign ended) does not keep its message
#: `sending` for ever. Driven like CLAIM, from due enrollments of email steps.
MARK_ABANDONED_IN_DOUBT = sa.text(
    """
    update app.sent_emails m
    set status = 'unknown', updated_at = :now,
        last_error = 'worker stopped during the SMTP conversation; not resent'
    from app.campaign_contacts cc
    join app.campaign_steps s on s.id = cc.current_step_id
    where cc.status in ('enrolled', 'active') and s.step_type = 'email'
      and cc.next_run_at <= :now and cc.lease_expires_at <= :now
      and m.tenant_id = cc.tenant_id and m.campaign_contact_id = cc.id and m.step_id = s.id
      and m.status = 'sending'
    """
)

DUE_SUMMARY = sa.text(
    """
    select count(*) as due, min(cc.next_run_at) as oldest
    from app.campaign_contacts cc
    join app.campaigns c on c.id = cc.campaign_id
    where cc.status in ('enrolled', 'active') and cc.next_run_at <= :now
      and (cc.lease_expires_at is null or cc.lease_expires_at <= :now)
      and c.status = 'active'
    """
)


# Every write to a claimed enrollment names the worker that holds its lease: a worker whose
# lease ran out (and was taken over) changes nothing.


def defer(
    conn: Connection,
    ids: Sequence[uuid.UUID],
    untils: Sequence[datetime],
    reasons: Sequence[str],
    now: datetime,
) -> None:
    if ids:
        conn.execute(
            DEFER, {"ids": list(ids), "untils": list(untils), "reasons": list(reasons), "now": now}
        )


def exit_many(
    conn: Connection, ids: Sequence[uuid.UUID], reasons: Sequence[str], now: datetime
) -> None:
    if ids:
        conn.execute(EXIT_MANY, {"ids": list(ids), "reasons": list(reasons), "now": now})


def lease(
    conn: Connection, ids: Sequence[uuid.UUID], worker: str, now: datetime, length: timedelta
) -> None:
    if ids:
        conn.execute(
            LEASE, {"ids": list(ids), "worker": worker, "now": now, "lease_until": now + length}
        )


def advance(
    conn: Connection,
    enrollment_id: uuid.UUID,
    step_id: uuid.UUID,
    now: datetime,
    worker: str,
    *,
    sent_at: datetime | None = None,
) -> bool:
    """Move past `step_id` into the next step (or complete); release the lease."""
    params = {
        "enrollment_id": enrollment_id,
        "step_id": step_id,
        "now": now,
        "worker": worker,
        "sent_at": sent_at,
    }
    return conn.execute(ADVANCE, params).rowcount == 1


def reschedule(
    conn: Connection,
    enrollment_id: uuid.UUID,
    next_run_at: datetime,
    now: datetime,
    worker: str,
    reason: str | None = None,
) -> bool:
    params = {
        "enrollment_id": enrollment_id,
        "next_run_at": next_run_at,
        "reason": reason,
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
    refund: bool = False,
) -> bool:
    """Settle a message that is `sending`; False if it was settled by someone else.

    `refund`: nothing was handed over and the attempt does not count (the server was down).
    """
    params = {
        "id": message_row_id,
        "status": status,
        "now": now,
        "response": response,
        "error": error,
        "sent_at": sent_at,
        "next_attempt_at": next_attempt_at,
        "refund": int(refund),
    }
    return conn.execute(RECORD, params).rowcount == 1


def mark_abandoned_in_doubt(conn: Connection, now: datetime) -> int:
    """Mark `unknown` the messages stopped workers left `sending`; how many."""
    return conn.execute(MARK_ABANDONED_IN_DOUBT, {"now": now}).rowcount


def due_summary(conn: Connection, now: datetime) -> tuple[int, datetime | None]:
    row = conn.execute(DUE_SUMMARY, {"now": now}).one()
    return row.due, row.oldest
