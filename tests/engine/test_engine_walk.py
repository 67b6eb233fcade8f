"""A fake clock walks the real engine over simulated weeks.

Every call of `send_due` is one full engine pass (enrol, advance wait/condition/action steps,
claim, SMTP into a real server, record) at the clock's `now`, as the Dagster sensor would start
them. The tests below then read the database and the SMTP server's mailbox and check what the
issue promises for every single contact: its own path through a branching sequence, its own
time zone's window, the campaign's and the senders' daily limits, the waits, and that the
forecast is what such a run sends.
"""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from engine import campaign_files as cf
from engine.campaigns import launch_campaign
from engine.db import Database, tenant_transaction
from engine.senders import SmtpServer, create_sender
from engine.sending import store
from engine.sending.scheduler import Config, SendReport, send_due
from engine.sequence import rules, steps
from engine.sequence.forecast import SimCampaign, SimEnrollment, SimStep, forecast, load, simulate
from engine.tenants import create_tenant
from tests.engine.campaign_rows import add_contact

CAMPAIGN_TZ = ZoneInfo("America/New_York")
WINDOW_START, WINDOW_END = time(9), time(17)
#: Contact time zones, by contact number modulo their count. None and a misspelt name both
#: fall back to the campaign's zone; Kolkata's half-hour offset opens its window between two
#: hourly marks.
ZONES = (
    "America/Los_Angeles",
    "Europe/Berlin",
    "Asia/Tokyo",
    "Australia/Sydney",
    "Asia/Kolkata",
    None,
    "Europe/Berln",
)

_MESSAGES = sa.text(
    """
    select m.id, m.campaign_contact_id, m.contact_id, m.sender_account_id, m.status,
           m.queued_at, m.sent_at, m.recipient_email, m.subject, s.key as step
    from app.sent_emails m
    join app.campaign_steps s on s.id = m.step_id
    where m.campaign_id = :campaign_id
    order by m.queued_at, m.recipient_email
    """
)
_ENROLLMENTS = sa.text(
    """
    select ct.id as contact_id, ct.email, ct.timezone, ct.tags, cc.id, cc.status,
           cc.steps_completed, cc.exit_reason, cc.completed_at
    from app.campaign_contacts cc join app.contacts ct on ct.id = cc.contact_id
    where cc.campaign_id = :campaign_id
    """
)
# Intro messages of this pass to contacts who "open" them: the open arrives a minute later.
_OPENS_OF_THE_PASS = sa.text(
    """
    insert into app.email_events
        (tenant_id, event_type, sent_email_id, contact_id, campaign_id, step_id, occurred_at,
         dedup_key)
    select m.tenant_id, 'open', m.id, m.contact_id, m.campaign_id, m.step_id,
           m.sent_at + interval '1 minute', 'open:' || m.id
    from app.sent_emails m
    join app.campaign_steps s on s.id = m.step_id
    where m.campaign_id = :campaign_id and s.key = 'intro' and m.sent_at = :now
      and m.contact_id = any(:openers)
    """
)
_TRANSITIONS = sa.text(
    """
    select t.contact_id, f.key as from_step, s.key as to_step, t.outcome, t.occurred_at
    from app.step_transitions t
    left join app.campaign_steps f on f.id = t.from_step_id
    left join app.campaign_steps s on s.id = t.to_step_id
    where t.campaign_id = :campaign_id
    order by t.id
    """
)
_LIST_OF = sa.text("select list_id from app.campaigns where id = :id")
_CAMPAIGN_STATUS = sa.text("select status from app.campaigns where id = :id")

BRANCHING = """
name: walk
list: walkers
senders: [alice@acme.example, bob@acme.example]
timezone: America/New_York
schedule:
  strategy: immediate
  window: "09:00-17:00"
  days: [mon, tue, wed, thu, fri]
limits:
  daily: {daily}
steps:
  - id: intro
    email:
      subject: "Intro for {{{{ first_name | default('there') }}}}"
      text: "Hi {{{{ first_name | default('there') }}}}"
  - id: pause
    wait: 2d
  - id: warm?
    condition: {{opened: intro}}
    then: tag-warm
    else: tag-cold
  - id: tag-warm
    action: {{tag: warm}}
  - id: warm-followup
    email: {{subject: "Warm follow-up", text: "Glad it caught your eye"}}
    next: end
  - id: tag-cold
    action: {{tag: cold}}
  - id: cold-followup
    email: {{subject: "Cold follow-up", text: "One more try"}}
"""


def _setup(
    database: Database,
    text: str,
    people: int,
    now: datetime,
    senders: dict[str, tuple[int, int]],
) -> tuple[uuid.UUID, uuid.UUID, dict[uuid.UUID, int], dict[str, uuid.UUID]]:
    """A tenant, its senders ({email: (daily limit, min gap seconds)}), the campaign `text`
    applied and `people` contacts in its list (contact i in ZONES[i % len(ZONES)]), launched at
    `now`. Returns the tenant, the campaign, contact number by id and sender id by email."""
    tenant_id, _ = create_tenant(database.owner, "walk")
    with tenant_transaction(database.app, tenant_id) as conn:
        sender_ids = {
            email: create_sender(
                conn, email, email.split("@")[0].title(), daily_limit=limit, min_gap_seconds=gap
            )
            for email, (limit, gap) in senders.items()
        }
        applied = cf.apply(conn, cf.loads(text, "walk.yaml"), now)
        list_id = conn.execute(_LIST_OF, {"id": applied.campaign_id}).scalar_one()
        numbers = {
            add_contact(
                conn,
                f"person{i:03d}@example.com",
                list_id=list_id,
                first_name=f"Person{i}",
                timezone=ZONES[i % len(ZONES)],
            ): i
            for i in range(people)
        }
        launch_campaign(conn, applied.campaign_id, now)
    return tenant_id, applied.campaign_id, numbers, sender_ids


def _walk(
    database: Database,
    tenant_id: uuid.UUID,
    sink: SmtpServer,
    start: datetime,
    end: datetime,
    tick: timedelta,
    config: Config,
    after: Callable[[datetime, SendReport], None] | None = None,
) -> list[tuple[datetime, SendReport]]:
    """The clock at `start`, `start + tick`, ... up to `end` (excluded): at each mark a full
    engine pass when the due-sends sensor would start one (something is due, or a campaign or
    list member waits to start), else a pass once a UTC day anyway, which must do nothing.
    Every pass is clean: no errors, failures, bounces, retries or messages in doubt.
    Returns each pass's time and report; `after` hears of each pass first."""
    passes = []
    now = start
    while now < end:
        with tenant_transaction(database.app, tenant_id) as conn:
            due = store.due_summary(conn, now)[0] + steps.waiting_to_start(conn, now)[0]
        if due or (now.hour, now.minute) == (0, 0):
            report = send_due(database.app, sink, now, config=config)
            assert not report.errors, (now, report.errors)
            assert (report.failed, report.bounced, report.unknown, report.retrying) == (
                0,
                0,
                0,
                0,
            ), now
            if not due:
                assert (report.claimed, report.advanced, report.enrolled) == (0, 0, 0), now
            if after is not None:
                after(now, report)
            passes.append((now, report))
        now += tick
    return passes


def _zone(name: str | None) -> ZoneInfo:
    return rules.contact_timezone(name, CAMPAIGN_TZ)


def test_a_branching_sequence_walks_every_contact_down_its_own_path_over_weeks(
    database, smtp_server
):
    # Thursday 22 October 2026, 08:00 in New York. The walk crosses Europe's change back from
    # summer time (25 October) and America's (1 November) while messages are still going out.
    start = datetime(2026, 10, 22, 12, 0, tzinfo=UTC)
    people = 300
    daily = 60
    # Together the senders may send 65 a UTC day, the campaign 60 a New York day: which one
    # holds a message back depends on the hour and the zones whose windows are open.
    sender_limits = {"alice@acme.example": 40, "bob@acme.example": 25}
    limits = {email: (limit, 0) for email, limit in sender_limits.items()}
    tenant_id, campaign_id, numbers, sender_ids = _setup(
        database, BRANCHING.format(daily=daily), people, start, limits
    )
    openers = [c for c, i in numbers.items() if i % 3 == 0]

    def opens(now: datetime, report: SendReport) -> None:
        if report.sent:
            with tenant_transaction(database.app, tenant_id) as conn:
                params = {"campaign_id": campaign_id, "now": now, "openers": openers}
                conn.execute(_OPENS_OF_THE_PASS, params)

    passes = _walk(
        database,
        tenant_id,
        smtp_server.server(),
        start,
        start + timedelta(weeks=3),
        timedelta(minutes=30),
        Config(batch_size=200),
        opens,
    )

    with tenant_transaction(database.app, tenant_id) as conn:
        messages = conn.execute(_MESSAGES, {"campaign_id": campaign_id}).all()
        enrollments = conn.execute(_ENROLLMENTS, {"campaign_id": campaign_id}).all()
        status = conn.execute(_CAMPAIGN_STATUS, {"id": campaign_id}).scalar_one()

    # Every contact walked its own path: intro, then the follow-up of its branch, tagged.
    assert len(enrollments) == people
    by_contact = defaultdict(list)
    for m in messages:
        by_contact[m.contact_id].append(m)
    opened = set(openers)
    for e in enrollments:
        mine = by_contact[e.contact_id]
        branch = "warm" if e.contact_id in opened else "cold"
        assert [m.step for m in mine] == ["intro", f"{branch}-followup"], e.email
        assert [m.status for m in mine] == ["sent", "sent"], e.email
        assert (e.status, e.exit_reason, e.tags) == ("completed", None, [branch]), e.email
        assert e.steps_completed == 5, e.email  # intro, pause, warm?, tag, follow-up
        intro, followup = mine
        # The wait counts from the intro's pass; the window may only make it longer.
        assert followup.sent_at - intro.sent_at >= timedelta(days=2), e.email
        assert e.completed_at == followup.sent_at, e.email
    assert status == "completed"

    # The step history (migration 0016's triggers) is each contact's path, step by step, at
    # the times of the passes that moved it.
    with tenant_transaction(database.app, tenant_id) as conn:
        history = conn.execute(_TRANSITIONS, {"campaign_id": campaign_id}).all()
    walked = defaultdict(list)
    for t in history:
        walked[t.contact_id].append((t.from_step, t.to_step, t.outcome))
    for e in enrollments:
        branch = "warm" if e.contact_id in opened else "cold"
        assert walked[e.contact_id] == [
            (None, "intro", "entered"),
            ("intro", "pause", "moved"),
            ("pause", "warm?", "moved"),
            ("warm?", f"tag-{branch}", "moved"),
            (f"tag-{branch}", f"{branch}-followup", "moved"),
            (f"{branch}-followup", None, "completed"),
        ], e.email
        intro, followup = by_contact[e.contact_id]
        times = [t.occurred_at for t in history if t.contact_id == e.contact_id]
        assert times[1] == intro.sent_at and times[-1] == followup.sent_at == e.completed_at

    # The SMTP server got exactly these messages, once each.
    received = Counter((m["To"], m["Subject"]) for m in smtp_server.messages)
    expected = Counter((m.recipient_email, m.subject) for m in messages)
    assert received == expected and set(received.values()) == {1}
    assert len(smtp_server.messages) == 2 * people
    assert len({(m.campaign_contact_id, m.step) for m in messages}) == len(messages)

    # Every message went in its contact's own window (the campaign's zone without a valid one).
    zone_of = {e.contact_id: _zone(e.timezone) for e in enrollments}
    for m in messages:
        assert m.sent_at == m.queued_at
        local = m.sent_at.astimezone(zone_of[m.contact_id])
        assert local.isoweekday() <= 5, (m.recipient_email, local)
        assert WINDOW_START <= local.time() < WINDOW_END, (m.recipient_email, local)

    # The campaign's limit counts its New York day, the senders' their UTC day.
    per_campaign_day = Counter(m.queued_at.astimezone(CAMPAIGN_TZ).date() for m in messages)
    assert max(per_campaign_day.values()) == daily  # reached, never passed
    per_sender_day: Counter[tuple[uuid.UUID, date]] = Counter(
        (m.sender_account_id, m.queued_at.astimezone(UTC).date()) for m in messages
    )
    for email, limit in sender_limits.items():
        days = [n for (s, _), n in per_sender_day.items() if s == sender_ids[email]]
        assert max(days) == limit, email  # reached, never passed
    # Each of those rules held messages back at some pass, and so did the windows.
    deferred: Counter[str] = Counter()
    for _, report in passes:
        deferred.update(report.deferred)
    assert {"window", "campaign limit", "sender limit"} <= set(deferred), deferred
    # Berlin's window is open at launch (14:00 there): its contacts got their intro at once.
    assert min(m.queued_at for m in messages) == start
    # Messages went out before, between and after both changes of the clocks.
    sent_days = {m.queued_at.date() for m in messages}
    assert min(sent_days) < date(2026, 10, 25) and max(sent_days) > date(2026, 11, 1)


FORECAST = """
name: forecast-me
list: forecast
senders: [alice@acme.example, bob@acme.example]
timezone: Europe/Berlin
schedule:
  strategy: immediate
  window: "09:00-17:00"
  days: [mon, tue, wed, thu, fri]
limits:
  daily: 20
steps:
  - id: intro
    email: {subject: "Hello {{ first_name | default('there') }}", text: "Hi"}
  - id: ps
    email: {subject: "P.S.", text: "One more thing"}
  - id: pause
    wait: 1d
  - id: warm?
    condition:
      any:
        - {opened: intro}
        - {lead_score: {gte: 50}}
    then: warm-followup
    else: tag-cold
  - id: warm-followup
    email: {subject: "Warm", text: "A call?", sender: alice@acme.example}
    next: end
  - id: tag-cold
    action: {tag: cold}
  - id: still-cold?
    condition: {field: tags, contains: cold}
    then: later
    else: end
  - id: later
    wait: 3d
  - id: breakup
    email: {subject: "Closing the loop", text: "Bye"}
"""
FORECAST_ZONES = (None, "America/New_York", "Asia/Tokyo")


def test_the_forecast_is_what_a_simulated_run_sends(database, smtp_server):
    # Wednesday 18 November 2026, 07:00 in Berlin; a pass every hour from then on.
    now = datetime(2026, 11, 18, 6, 0, tzinfo=UTC)
    every = timedelta(hours=1)
    days = 14
    batch_size = 7
    # alice: 8 a UTC day, and she alone sends the warm follow-up; bob: 50 minutes and a jitter
    # of up to a quarter of that between two messages, so he sends one a pass and now and then
    # skips one; the campaign: 20 a Berlin day. A small claim batch makes the p.s. (reached by
    # sending the intro) wait for a later batch of the same pass.
    limits = {"alice@acme.example": (8, 0), "bob@acme.example": (1000, 50 * 60)}
    # 21 contacts in the seven zones of the walk, enrolled at launch; 24 more join the list
    # afterwards, for the first pass to enrol.
    tenant_id, campaign_id, _, _ = _setup(database, FORECAST, 21, now, limits)
    with tenant_transaction(database.app, tenant_id) as conn:
        list_id = conn.execute(_LIST_OF, {"id": campaign_id}).scalar_one()
        for i in range(24):
            add_contact(
                conn,
                f"lead{i:02d}@example.com",
                list_id=list_id,
                first_name=f"Lead{i}",
                timezone=FORECAST_ZONES[i % len(FORECAST_ZONES)],
                lead_score=(i * 37) % 100,
            )
        predicted = forecast(conn, campaign_id, now, days, pass_every=every, batch_size=batch_size)
        # The same simulation, message by message, to say where a difference begins.
        simulated: list[tuple[datetime, uuid.UUID, str, uuid.UUID | None]] = []
        simulate(
            *load(conn, campaign_id, now),
            now,
            days=days,
            pass_every=every,
            batch_size=batch_size,
            on_send=lambda *message: simulated.append(message),
        )
    assert predicted.last_day is not None and (predicted.later, predicted.unfinished) == (0, 0)

    passes = _walk(
        database,
        tenant_id,
        smtp_server.server(),
        now,
        now + timedelta(days=days),
        every,
        Config(batch_size=batch_size),
    )

    with tenant_transaction(database.app, tenant_id) as conn:
        messages = conn.execute(_MESSAGES, {"campaign_id": campaign_id}).all()
        status = conn.execute(_CAMPAIGN_STATUS, {"id": campaign_id}).scalar_one()
    sent = sorted((m.queued_at, m.contact_id.int, m.step, m.sender_account_id) for m in messages)
    expected = sorted((t, contact.int, step, sender) for t, contact, step, sender in simulated)
    first_difference = next(
        (i for i, (a, b) in enumerate(zip(sent, expected, strict=False)) if a != b),
        min(len(sent), len(expected)),
    )
    assert sent[first_difference:][:5] == expected[first_difference:][:5]
    assert len(sent) == len(expected)

    berlin = ZoneInfo("Europe/Berlin")
    per_day = Counter((m.queued_at.astimezone(berlin).date(), m.step) for m in messages)
    assert dict(per_day) == dict(predicted.counts)
    assert max(d for d, _ in per_day) == predicted.last_day
    assert {step for _, step in per_day} == {"intro", "ps", "warm-followup", "breakup"}
    assert status == "completed" and {m.status for m in messages} == {"sent"}
    assert len(smtp_server.messages) == len(messages) == predicted.total
    # The run met what the scenario means it to: windows, limits and gaps held messages back.
    deferred: Counter[str] = Counter()
    for _, report in passes:
        deferred.update(report.deferred)
    assert {"window", "campaign limit", "sender limit", "sender gap"} <= set(deferred), deferred


def test_emails_deferred_in_bulk_still_fill_the_claim_batches_of_the_forecast():
    """The engine claims two due emails at a time: contact 1 (Tokyo, its window closed) and
    contact 2. Contact 2's intro goes and reaches the p.s., which the next claim takes before
    contact 3's intro; alice's limit of two then holds contact 3 until the next day. The
    forecast, which moves closed-window emails in bulk, must count them in their batch too."""
    t = datetime(2026, 11, 16, 10, 0, tzinfo=UTC)  # a Monday: 19:00 in Tokyo
    campaign = SimCampaign(
        id="c",
        name="c",
        status="active",
        schedule=rules.Schedule(tz=ZoneInfo("UTC"), window=rules.Window(time(9), time(17))),
        steps={"intro": SimStep("intro", "email", next="ps"), "ps": SimStep("ps", "email")},
        senders=("alice",),
    )
    people = [
        SimEnrollment(1, {"timezone": "Asia/Tokyo"}, "intro", t),
        SimEnrollment(2, {}, "intro", t),
        SimEnrollment(3, {}, "intro", t),
    ]
    sends: list[tuple[datetime, int, str]] = []
    simulate(
        campaign,
        people,
        {"alice": rules.SenderState("alice", daily_limit=2)},
        t,
        days=3,
        batch_size=2,
        on_send=lambda at, contact, step, _: sends.append((at, contact, step)),
    )
    midnight = datetime(2026, 11, 17, tzinfo=UTC)  # 09:00 in Tokyo, alice's new UTC day
    wednesday = midnight + timedelta(days=1, hours=9)  # alice's limit held contact 3 till then
    assert sends == [
        (t, 2, "intro"),
        (t, 2, "ps"),
        (midnight, 1, "intro"),
        (midnight, 1, "ps"),
        (wednesday, 3, "intro"),
        (wednesday, 3, "ps"),
    ]
