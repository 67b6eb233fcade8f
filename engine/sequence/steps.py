"""The set-based steps of an engine pass: start, enroll, stop, advance, complete.

Every function takes the tenant transaction (`engine.db.tenant_transaction`) and the pass's
`now`, changes only rows of that transaction (a dry run rolls it back and nothing escapes it:
no commits, no session state, no sequences), and returns counts. What must hold:

* **Set-based.** A million due enrollments cost a few statements: waits of every step in one
  UPDATE, one per condition step, one per action step, repeated while anything moved (an
  enrollment may pass a wait, a condition and an action in one pass). Never a loop per contact.
* **Leases.** A row whose lease has not run out (``lease_expires_at > now``) belongs to a sender
  and is never touched here. Every statement re-checks, on the row it changes, the step the
  enrollment stands on, that it is due and unleased: PostgreSQL re-evaluates those on the
  newest row version when a concurrent pass changed it first, so of two passes at once only
  one moves an enrollment, and an action's effect (data-modifying CTE over the rows the UPDATE
  returned) is applied once.
* **Entering a step** sets ``next_run_at``: a wait with a duration ``now + d`` (exact elapsed
  seconds, whatever the session's time zone), a wait until ``greatest(now, until)``, any other
  step ``now``; the end (NULL) completes the enrollment. Moving on adds one to
  ``steps_completed`` and clears ``wait_reason`` and the lease.
* Only enrollments of **active** campaigns move; exits apply whatever the campaign's state.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from engine.sequence import conditions
from engine.sequence.conditions import ConditionError

log = logging.getLogger(__name__)

#: Memory for each hash or sort of the step statements (PostgreSQL's `work_mem`, set for the
#: pass's transaction only): a condition over a quarter of a million enrollments hashes them,
#: and the server's default of 4 MB spills that to disk in eight batches.
WORK_MEM = "64MB"
_WORK_MEM = sa.text("select set_config('work_mem', :work_mem, true)")

#: Rounds of `advance` in one pass. A campaign file cannot loop without waiting, so real
#: sequences stop long before; the bound only keeps a zero-length wait loop from spinning.
MAX_ROUNDS = 100


class ExitReason(StrEnum):
    """Why the engine's own statements end an enrollment (an `exit` action gives its own)."""

    SUPPRESSED = "suppressed"
    UNSUBSCRIBED = "contact unsubscribed"
    BOUNCED = "contact bounced"
    COMPLAINED = "contact complained"
    REPLIED = "replied"
    COMPANY_REPLIED = "company replied"
    CAMPAIGN_ENDED = "campaign ended"
    INVALID_STEP = "invalid step"


@dataclass
class StepCounts:
    """What `advance` did. `advanced` counts moves past a wait, condition or action step
    (an enrollment passing three steps counts three); `completed` those moves that reached the
    end; `exited` enrollments ended by an `exit` action (by its reason) or a broken step."""

    advanced: int = 0
    completed: int = 0
    exited: Counter[str] = field(default_factory=Counter)
    rounds: int = 0


# -- shared pieces of the statements (constants; no value is ever formatted into them) ---------

#: Due, unleased and in a live state: checked on the very row an UPDATE changes.
_DUE = """cc.status in ('enrolled', 'active')
      and cc.next_run_at <= cast(:now as timestamptz)
      and (cc.lease_expires_at is null or cc.lease_expires_at <= cast(:now as timestamptz))"""

#: next_run_at of an enrollment entering step `ns` at :now (the design's "entering a step").
_ENTERING = """case when ns.step_type = 'wait' then coalesce(
        cast(:now as timestamptz) + extract(epoch from ns.wait_duration) * interval '1 second',
        greatest(cast(:now as timestamptz), ns.wait_until))
    else cast(:now as timestamptz) end"""

#: The SET list that moves `cc` to step `{next}` (an SQL expression; NULL = the end), entered
#: at `{run_at}`. The statements compute both in their FROM list, once per step or per row.
_MOVE = """current_step_id = coalesce({next}, cc.current_step_id),
    status = case when {next} is null then 'completed' else 'active' end,
    next_run_at = case when {next} is null then null else {run_at} end,
    completed_at = case when {next} is null then cast(:now as timestamptz)
                        else cc.completed_at end,
    started_at = coalesce(cc.started_at, cast(:now as timestamptz)),
    steps_completed = cc.steps_completed + 1,
    wait_reason = null, lease_owner = null, lease_expires_at = null,
    updated_at = cast(:now as timestamptz)"""

#: One row: step :{param} (NULL: the end) as `id`, and when an enrollment entering it now is due.
_TARGET = f"""(select ns.id, {_ENTERING} as run_at
        from (select) one left join app.campaign_steps ns on ns.id = cast(:{{param}} as uuid))"""

_COUNT_MOVED = """select count(*) as moved,
       count(*) filter (where status = 'completed') as completed
from moved"""


def _move(next: str, run_at: str) -> str:
    return _MOVE.replace("{next}", next).replace("{run_at}", run_at)


def _target(param: str) -> str:
    return _TARGET.replace("{param}", param)


# -- campaigns starting and ending ---------------------------------------------------------------

#: Scheduled campaigns `c` whose start has come.
_STARTING = "c.status = 'scheduled' and (c.start_at is null or c.start_at <= :now)"

_ACTIVATE_SCHEDULED = sa.text(
    f"""
    update app.campaigns c
    set status = 'active', launched_at = coalesce(launched_at, :now), updated_at = :now
    where {_STARTING}
    """
)

# A campaign is done once it had enrollments and none is still on its way (paused enrollments
# are still on their way).
_COMPLETE_CAMPAIGNS = sa.text(
    """
    update app.campaigns c
    set status = 'completed', completed_at = :now, updated_at = :now
    where c.status = 'active'
      and exists (select from app.campaign_contacts cc where cc.campaign_id = c.id)
      and not exists (
          select from app.campaign_contacts cc
          where cc.campaign_id = c.id and cc.status in ('enrolled', 'active', 'paused')
      )
    """
)


def activate_scheduled(conn: Connection, now: datetime) -> int:
    """Scheduled campaigns whose start has come go active; how many did."""
    return conn.execute(_ACTIVATE_SCHEDULED, {"now": now}).rowcount


def complete_campaigns(conn: Connection, now: datetime) -> int:
    """Active campaigns with enrollments and none left on its way complete; how many did."""
    return conn.execute(_COMPLETE_CAMPAIGNS, {"now": now}).rowcount


# -- enrollment -----------------------------------------------------------------------------------

#: New members of active campaigns' lists, with the campaign's first live step `ns` (a campaign
#: without live steps enrolls nobody): who a pass enrolls, defined once for `enroll` and
#: `waiting_to_start`. Contacts already enrolled are skipped before anything else is looked at
#: (the anti-join); suppressed addresses and contacts that are not active are never enrolled.
_JOINING = """
        from app.campaigns c
        cross join lateral (
            select s.* from app.campaign_steps s
            where s.campaign_id = c.id and s.removed_at is null
            order by s.step_order limit 1
        ) ns
        join app.contact_list_members m on m.tenant_id = c.tenant_id and m.list_id = c.list_id
        join app.contacts ct
            on ct.tenant_id = m.tenant_id and ct.id = m.contact_id and ct.status = 'active'
        where c.status = 'active'
          and (c.end_at is null or c.end_at > cast(:now as timestamptz))
          and not exists (
              select from app.campaign_contacts cc
              where cc.tenant_id = c.tenant_id and cc.campaign_id = c.id
                and cc.contact_id = m.contact_id
          )
          and not exists (
              select from app.suppressions sup
              where sup.tenant_id = ct.tenant_id and lower(sup.email) = lower(ct.email)
          )"""

# Each on its campaign's first live step; the unique key makes a concurrent pass harmless.
_ENROLL = sa.text(
    f"""
    with new as (
        insert into app.campaign_contacts
            (tenant_id, campaign_id, contact_id, status, current_step_id, next_run_at,
             enrolled_at, updated_at)
        select c.tenant_id, c.id, ct.id, 'enrolled', ns.id, {_ENTERING},
               cast(:now as timestamptz), cast(:now as timestamptz)
        {_JOINING}
        on conflict (tenant_id, campaign_id, contact_id) do nothing
        returning campaign_id
    )
    select c.name as campaign, count(*) as enrolled
    from new join app.campaigns c on c.id = new.campaign_id
    group by c.name order by c.name
    """
)

#: Work the start of a pass would find that no enrollment's `next_run_at` shows: campaigns
#: `activate_scheduled` starts, members `enroll` enrolls. `oldest` (since when) stays the same
#: from one look to the next while nothing changes.
_WAITING_TO_START = sa.text(
    f"""
    select count(*) as waiting, min(since) as oldest from (
        select coalesce(c.start_at, c.updated_at) as since
        from app.campaigns c where {_STARTING}
        union all
        select m.added_at {_JOINING}
    ) w
    """
)


def enroll_by_campaign(conn: Connection, now: datetime) -> dict[str, int]:
    """Enroll new members of the tenant's active campaigns' lists; how many, per campaign."""
    return {row.campaign: row.enrolled for row in conn.execute(_ENROLL, {"now": now})}


def enroll(conn: Connection, now: datetime) -> int:
    """Enroll new members of the tenant's active campaigns' lists; how many in all."""
    return sum(enroll_by_campaign(conn, now).values())


def waiting_to_start(conn: Connection, now: datetime) -> tuple[int, datetime | None]:
    """How much work a pass at `now` would start that no enrollment is due for yet -- campaigns
    whose scheduled start has come, list members it would enroll -- and since when. Whoever
    decides whether a pass is needed (the due-sends sensor) counts these with the due ones:
    else contacts added to a running campaign's list wait for some other work to fall due."""
    row = conn.execute(_WAITING_TO_START, {"now": now}).one()
    return row.waiting, row.oldest


# -- exits ---------------------------------------------------------------------------------------

_EXIT_SET = """status = 'exited', exit_reason = {reason}, exited_at = cast(:now as timestamptz),
        next_run_at = null, wait_reason = null, lease_owner = null, lease_expires_at = null,
        updated_at = cast(:now as timestamptz)"""
_LIVE_UNLEASED = """cc.status in ('enrolled', 'active')
      and (cc.lease_expires_at is null or cc.lease_expires_at <= cast(:now as timestamptz))"""

# Driven from the few stopped contacts (not from every enrollment): those no longer active
# and those whose address is suppressed. `materialized`: found once, then joined; right after
# a large upload the statistics still say "a few rows" and the planner would otherwise run the
# whole search again for every enrollment (13 s for 3,000 enrollments).
_EXIT_STOPPED_CONTACTS = sa.text(
    f"""
    with stopped as materialized (
        select ct.id, case ct.status
                   when 'unsubscribed' then :unsubscribed
                   when 'bounced' then :bounced
                   else :complained end as reason
        from app.contacts ct where ct.status <> 'active'
        union all
        select ct.id, :suppressed
        from app.suppressions sup
        join app.contacts ct on ct.tenant_id = sup.tenant_id and lower(ct.email) = lower(sup.email)
        where ct.status = 'active'
    ), gone as (
        update app.campaign_contacts cc
        set {_EXIT_SET.format(reason="s.reason")}
        from stopped s
        where cc.contact_id = s.id and {_LIVE_UNLEASED}
        returning cc.exit_reason
    )
    select exit_reason as reason, count(*) as exited from gone group by exit_reason
    """
)

#: Whether a reply event (`e`) may stop its whole company: one a mailbox matched to our message
#: by its references, or whose author the receiving server authenticated; not one matched by
#: its `From:` address alone, which anyone can write (engine.mailboxes.trust). Replies from
#: elsewhere (provider events) carry no `matched_by`: they count.
COMPANY_STOPPING = (
    "(e.payload ->> 'matched_by' is distinct from 'address'"
    " or e.payload ->> 'authenticated' = 'true')"
)

# A reply to a campaign stops the replying contact's enrollment (stop_on_reply contact or
# company) and, with `company`, every enrollment of that campaign whose address has the
# same domain -- if the reply can stop a company (`COMPANY_STOPPING`). Driven from the
# replies, which are few.
_EXIT_REPLIED = sa.text(
    f"""
    with replies as (
        select e.campaign_id, e.contact_id, st.stop_on_reply,
               bool_or({COMPANY_STOPPING}) as stops_company
        from app.email_events e
        join app.campaign_settings st on st.campaign_id = e.campaign_id
        where e.event_type = 'reply' and st.stop_on_reply <> 'never'
          and e.campaign_id is not null and e.contact_id is not null
        group by e.campaign_id, e.contact_id, st.stop_on_reply
    ), domains as (
        select distinct r.campaign_id, lower(split_part(rc.email, '@', 2)) as domain
        from replies r join app.contacts rc on rc.id = r.contact_id
        where r.stop_on_reply = 'company' and r.stops_company
    ), stopped as (
        select campaign_id, contact_id, true as own from replies
        union all
        select d.campaign_id, ct.id, false
        from domains d
        join app.contacts ct on lower(split_part(ct.email, '@', 2)) = d.domain
    ), chosen as materialized (
        -- the replying contact's own reason wins over its company's
        select campaign_id, contact_id,
               case when bool_or(own) then :replied else :company_replied end as reason
        from stopped group by campaign_id, contact_id
    ), gone as (
        update app.campaign_contacts cc
        set {_EXIT_SET.format(reason="s.reason")}
        from chosen s
        where cc.campaign_id = s.campaign_id and cc.contact_id = s.contact_id
          and {_LIVE_UNLEASED}
        returning cc.exit_reason
    )
    select exit_reason as reason, count(*) as exited from gone group by exit_reason
    """
)

_EXIT_ENDED = sa.text(
    f"""
    update app.campaign_contacts cc
    set {_EXIT_SET.format(reason=":reason")}
    from app.campaigns c
    where c.id = cc.campaign_id and c.end_at <= cast(:now as timestamptz) and {_LIVE_UNLEASED}
    """
)


def exit_stopped(conn: Connection, now: datetime) -> dict[str, int]:
    """End the enrollments that must not go on; how many, per reason (`ExitReason`).

    A contact no longer active (``contact unsubscribed|bounced|complained``) or whose address
    is suppressed (``suppressed``); a reply to the campaign under ``stop_on_reply`` contact
    (``replied``) or company (also ``company replied`` for everyone at the replier's email
    domain); a campaign past its ``end_at`` (``campaign ended``).
    """
    counts: Counter[str] = Counter()
    params = {
        "now": now,
        "unsubscribed": ExitReason.UNSUBSCRIBED.value,
        "bounced": ExitReason.BOUNCED.value,
        "complained": ExitReason.COMPLAINED.value,
        "suppressed": ExitReason.SUPPRESSED.value,
    }
    for row in conn.execute(_EXIT_STOPPED_CONTACTS, params):
        counts[row.reason] += row.exited
    replied = {
        "now": now,
        "replied": ExitReason.REPLIED.value,
        "company_replied": ExitReason.COMPANY_REPLIED.value,
    }
    for row in conn.execute(_EXIT_REPLIED, replied):
        counts[row.reason] += row.exited
    ended = conn.execute(_EXIT_ENDED, {"now": now, "reason": ExitReason.CAMPAIGN_ENDED.value})
    if ended.rowcount:
        counts[ExitReason.CAMPAIGN_ENDED.value] += ended.rowcount
    return dict(counts)


# -- advancing -----------------------------------------------------------------------------------

# The wait, condition and action steps of active campaigns that have due, unleased enrollments
# (a scan of the due range per step, reading index entries only: campaign_contacts_due_idx).
_DUE_STEPS = sa.text(
    f"""
    select s.id, s.campaign_id, s.key, s.step_type, s.next_step_id, s.true_next_step_id,
           s.false_next_step_id, s.condition_rules, s.action_payload
    from app.campaign_steps s
    join app.campaigns c on c.id = s.campaign_id
    where c.status = 'active' and s.step_type in ('wait', 'condition', 'action')
      and exists (
          select from app.campaign_contacts cc
          where cc.current_step_id = s.id and {_DUE}
      )
    order by s.id
    """
)

_STEP_KEYS = sa.text(
    """
    select campaign_id, key, id from app.campaign_steps
    where campaign_id = any(cast(:campaign_ids as uuid[])) and removed_at is null
    """
)

# Every due wait step at once: the wait is over, go to the step's next.
_ADVANCE_WAITS = sa.text(
    f"""
    with moved as (
        update app.campaign_contacts cc
        set {_move("s.next_step_id", _ENTERING)}
        from app.campaign_steps s
        left join app.campaign_steps ns on ns.id = s.next_step_id
        where s.id = any(cast(:step_ids as uuid[])) and cc.current_step_id = s.id and {_DUE}
        returning cc.status
    )
    {_COUNT_MOVED}
    """
)

# One condition step: the branch is decided once per row (the SET's subquery) and the row goes
# to :true_next or :false_next. `{condition}` is `conditions.to_sql` output: SQL built from
# allow-listed names, every value a bound parameter.
_ADVANCE_CONDITION = f"""
    with moved as (
        update app.campaign_contacts cc
        set (current_step_id, status, next_run_at, completed_at) = (
                select coalesce(n.id, cc.current_step_id),
                       case when n.id is null then 'completed' else 'active' end,
                       case when n.id is null then null else n.run_at end,
                       case when n.id is null then cast(:now as timestamptz)
                            else cc.completed_at end
                -- offset 0 keeps the planner from copying the condition into every use
                from (select {{condition}} as yes offset 0) x
                cross join lateral (
                    select case when x.yes then t.id else f.id end as id,
                           case when x.yes then t.run_at else f.run_at end as run_at
                    offset 0
                ) n
            ),
            started_at = coalesce(cc.started_at, cast(:now as timestamptz)),
            steps_completed = cc.steps_completed + 1,
            wait_reason = null, lease_owner = null, lease_expires_at = null,
            updated_at = cast(:now as timestamptz)
        from {{contacts}} {_target("true_next")} t, {_target("false_next")} f
        where {{contact_of_cc}} cc.current_step_id = cast(:step_id as uuid) and {_DUE}
        returning cc.status
    )
    {_COUNT_MOVED}
"""

#: The rows an action step moves on; the action's CTE applies to exactly these.
_MOVED_BY_ACTION = f"""moved as (
        update app.campaign_contacts cc
        set {_move("n.id", "n.run_at")}
        from {_target("next_id")} n
        where cc.current_step_id = cast(:step_id as uuid) and {_DUE}
        returning cc.tenant_id, cc.contact_id, cc.status
    )"""

_ACTION_TAG = sa.text(
    f"""
    with {_MOVED_BY_ACTION}, acted as (
        update app.contacts ct
        set tags = array_append(ct.tags, cast(:name as text)), updated_at = :now
        from moved m
        where ct.tenant_id = m.tenant_id and ct.id = m.contact_id
          and not (cast(:name as text) = any(ct.tags))
    )
    {_COUNT_MOVED}
    """
)

_ACTION_UNTAG = sa.text(
    f"""
    with {_MOVED_BY_ACTION}, acted as (
        update app.contacts ct
        set tags = array_remove(ct.tags, cast(:name as text)), updated_at = :now
        from moved m
        where ct.tenant_id = m.tenant_id and ct.id = m.contact_id
          and cast(:name as text) = any(ct.tags)
    )
    {_COUNT_MOVED}
    """
)

# Every writable column is in the statement; :set_<column> says whether this action writes it.
_SET_COLUMNS = ",\n            ".join(
    f"{column} = case when cast(:set_{column} as boolean) "
    f"then cast(:{column} as {'integer' if column == 'lead_score' else 'text'}) "
    f"else ct.{column} end"
    for column in conditions.WRITABLE_FIELDS
)
_ACTION_SET = sa.text(
    f"""
    with {_MOVED_BY_ACTION}, acted as (
        update app.contacts ct
        set {_SET_COLUMNS},
            attributes = (ct.attributes || cast(:attributes as jsonb))
                         - cast(:removed_attributes as text[]),
            updated_at = :now
        from moved m
        where ct.tenant_id = m.tenant_id and ct.id = m.contact_id
    )
    {_COUNT_MOVED}
    """
)

# The list is created when missing, but only when someone moved (an idle step creates nothing).
_ACTION_ADD_TO_LIST = sa.text(
    f"""
    with {_MOVED_BY_ACTION}, list as (
        insert into app.contact_lists (tenant_id, name, created_at, updated_at)
        select app.current_tenant_id(), cast(:name as text), :now, :now
        where exists (select from moved)
        on conflict (tenant_id, name) do update set updated_at = excluded.updated_at
        returning id
    ), acted as (
        insert into app.contact_list_members (tenant_id, list_id, contact_id, added_at)
        select m.tenant_id, l.id, m.contact_id, :now from moved m cross join list l
        on conflict (tenant_id, list_id, contact_id) do nothing
    )
    {_COUNT_MOVED}
    """
)

_ACTION_REMOVE_FROM_LIST = sa.text(
    f"""
    with {_MOVED_BY_ACTION}, acted as (
        delete from app.contact_list_members mb
        using moved m, app.contact_lists l
        where l.name = cast(:name as text) and mb.list_id = l.id
          and mb.contact_id = m.contact_id
    )
    {_COUNT_MOVED}
    """
)

# `exit` ends the enrollment where it stands (the action ran: one more step completed).
_ACTION_EXIT = sa.text(
    f"""
    update app.campaign_contacts cc
    set {_EXIT_SET.format(reason="cast(:name as text)")},
        steps_completed = cc.steps_completed + 1
    where cc.current_step_id = cast(:step_id as uuid) and {_DUE}
    """
)

_EXIT_ON_STEP = sa.text(
    f"""
    update app.campaign_contacts cc
    set {_EXIT_SET.format(reason=":reason")}
    where cc.current_step_id = cast(:step_id as uuid) and {_DUE}
    """
)

_ACTION_STATEMENTS = {
    "tag": _ACTION_TAG,
    "untag": _ACTION_UNTAG,
    "set": _ACTION_SET,
    "add_to_list": _ACTION_ADD_TO_LIST,
    "remove_from_list": _ACTION_REMOVE_FROM_LIST,
}


def _action_params(action: conditions.Action) -> dict[str, Any]:
    if action.kind != "set":
        return {"name": action.name}
    params: dict[str, Any] = {
        "attributes": json.dumps(dict(action.attributes)),
        "removed_attributes": list(action.removed_attributes),
    }
    for column in conditions.WRITABLE_FIELDS:
        params[f"set_{column}"] = column in action.columns
        params[column] = action.columns.get(column)
    return params


def advance(conn: Connection, now: datetime) -> StepCounts:
    """Move every due enrollment on a wait, condition or action step of an active campaign,
    round after round until nothing moves (at most `MAX_ROUNDS`); see `StepCounts`.

    A step that cannot run (its condition or action is invalid: the campaign file's checks
    should have refused it) ends the enrollments standing on it with ``invalid step`` and says
    why in the log, rather than holding them or failing the pass.
    """
    counts = StepCounts()
    conn.execute(_WORK_MEM, {"work_mem": WORK_MEM})
    for _ in range(MAX_ROUNDS):
        steps = conn.execute(_DUE_STEPS, {"now": now}).all()
        if not steps:
            break
        counts.rounds += 1
        moved = 0
        waits = [s.id for s in steps if s.step_type == "wait"]
        if waits:
            moved += _moved(counts, conn.execute(_ADVANCE_WAITS, {"now": now, "step_ids": waits}))
        condition_steps = [s for s in steps if s.step_type == "condition"]
        keys = _step_keys(conn, {s.campaign_id for s in condition_steps})
        for step in condition_steps:
            moved += _advance_condition(conn, step, keys[step.campaign_id], now, counts)
        for step in steps:
            if step.step_type == "action":
                moved += _advance_action(conn, step, now, counts)
        if not moved:
            break
    else:
        log.warning(
            "advance stopped after %d rounds; the rest moves on in the next pass", MAX_ROUNDS
        )
    return counts


def _moved(counts: StepCounts, result: sa.CursorResult) -> int:
    row = result.one()
    counts.advanced += row.moved
    counts.completed += row.completed
    return row.moved


def _step_keys(conn: Connection, campaign_ids: set[uuid.UUID]) -> dict[uuid.UUID, dict]:
    keys: dict[uuid.UUID, dict[str, uuid.UUID]] = {c: {} for c in campaign_ids}
    if campaign_ids:
        for row in conn.execute(_STEP_KEYS, {"campaign_ids": list(campaign_ids)}):
            keys[row.campaign_id][row.key] = row.id
    return keys


def _advance_condition(
    conn: Connection, step: sa.Row, keys: dict[str, uuid.UUID], now: datetime, counts: StepCounts
) -> int:
    try:
        condition, params = conditions.to_sql(step.condition_rules, keys, prefix="c_")
    except ConditionError as exc:
        return _invalid_step(conn, step, exc, now, counts)
    # Contacts are joined only for a condition on their fields (an engagement test reads
    # email_events alone): a join over every contact costs more than the test.
    joined = conditions.reads_contact(step.condition_rules)
    statement = sa.text(
        _ADVANCE_CONDITION.replace("{condition}", condition)
        .replace("{contacts}", "app.contacts ct," if joined else "")
        .replace(
            "{contact_of_cc}",
            "ct.tenant_id = cc.tenant_id and ct.id = cc.contact_id and" if joined else "",
        )
    )
    params |= {
        "now": now,
        "step_id": step.id,
        "true_next": step.true_next_step_id,
        "false_next": step.false_next_step_id,
    }
    return _moved(counts, conn.execute(statement, params))


def _advance_action(conn: Connection, step: sa.Row, now: datetime, counts: StepCounts) -> int:
    try:
        action = conditions.parse_action(step.action_payload)
    except ConditionError as exc:
        return _invalid_step(conn, step, exc, now, counts)
    if action.kind == "exit":
        exited = conn.execute(
            _ACTION_EXIT, {"now": now, "step_id": step.id, "name": action.name}
        ).rowcount
        if exited:
            counts.exited[action.name or ""] += exited
        return exited
    params = _action_params(action) | {"now": now, "step_id": step.id, "next_id": step.next_step_id}
    return _moved(counts, conn.execute(_ACTION_STATEMENTS[action.kind], params))


def _invalid_step(
    conn: Connection, step: sa.Row, exc: ConditionError, now: datetime, counts: StepCounts
) -> int:
    reason = ExitReason.INVALID_STEP.value
    exited = conn.execute(
        _EXIT_ON_STEP, {"now": now, "step_id": step.id, "reason": reason}
    ).rowcount
    log.error(
        "step %r of campaign %s cannot run (%s); %d enrollment(s) exited",
        step.key,
        step.campaign_id,
        exc,
        exited,
    )
    if exited:
        counts.exited[reason] += exited
    return exited
