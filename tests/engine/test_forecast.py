"""The forecast (engine/sequence/forecast.py): the simulation core against a plain reference
that walks every pass, then the loader against a real database."""

from __future__ import annotations

import time as wall
from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from engine.sequence import conditions, rules
from engine.sequence.forecast import (
    ForecastError,
    SimCampaign,
    SimEnrollment,
    SimStep,
    forecast,
    forecast_named,
    load,
    render_forecast,
    simulate,
)
from engine.sequence.rules import ALL_DAY, Schedule, SenderState, Window

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
OFFICE = Window(time(9), time(17), rules.WEEKDAYS)
#: A Monday, 08:00 in Berlin.
MONDAY = datetime(2026, 11, 16, 7, 0, tzinfo=UTC)


def email(key: str, next: str | None = None, sender: str | None = None) -> SimStep:
    return SimStep(key, "email", next=next, sender=sender)


def wait(key: str, next: str | None, duration: timedelta) -> SimStep:
    return SimStep(key, "wait", next=next, wait_duration=duration)


def campaign_of(
    *steps: SimStep,
    window: Window = OFFICE,
    limit: int = 500,
    senders: tuple[str, ...] = ("alice",),
    status: str = "active",
    **schedule: object,
) -> SimCampaign:
    return SimCampaign(
        id="q4",
        name="q4-outreach",
        status=status,
        schedule=Schedule(tz=BERLIN, window=window, daily_limit=limit, **schedule),
        steps={s.key: s for s in steps},
        senders=senders,
    )


def members(count: int, **contact: object) -> list[SimEnrollment]:
    return [SimEnrollment(i, {"email": f"c{i}@example.com", **contact}) for i in range(count)]


def free_sender(name: str = "alice", **kwargs: object) -> dict[str, SenderState]:
    return {name: SenderState(name, kwargs.pop("daily_limit", 10_000), **kwargs)}


def day(n: int) -> date:
    """The n-th day from MONDAY."""
    return date(2026, 11, 16) + timedelta(days=n)


# --------------------------------------------------------------------------- the core


def test_new_members_get_the_first_email_when_the_window_opens():
    sends = []
    result = simulate(
        campaign_of(email("intro")),
        members(3),
        free_sender(),
        MONDAY,
        days=3,
        on_send=lambda t, *rest: sends.append((t, *rest)),
    )
    assert result.sent(day(0), "intro") == 3
    assert result.total == 3
    assert result.last_day == day(0)
    nine = datetime(2026, 11, 16, 8, 0, tzinfo=UTC)
    assert sends == [
        (nine, 0, "intro", "alice"),
        (nine, 1, "intro", "alice"),
        (nine, 2, "intro", "alice"),
    ]


def test_a_message_due_between_passes_goes_at_the_next_pass():
    """Passes run every 5 minutes from `now` (09:00): due 09:02 goes at 09:05."""
    now = datetime(2026, 11, 16, 8, 0, tzinfo=UTC)  # 09:00 Berlin
    person = SimEnrollment(1, {}, step="intro", due=now + timedelta(minutes=2))
    sends = []
    simulate(
        campaign_of(email("intro")),
        [person],
        free_sender(),
        now,
        on_send=lambda t, *rest: sends.append(t),
    )
    assert sends == [now + timedelta(minutes=5)]
    # Passes aligned to a `now` of 09:01 go at 09:01, 09:06: due 09:02 goes at 09:06.
    sends.clear()
    later = now + timedelta(minutes=1)
    simulate(
        campaign_of(email("intro")),
        [person],
        free_sender(),
        later,
        on_send=lambda t, *rest: sends.append(t),
    )
    assert sends == [later + timedelta(minutes=5)]


def test_waits_and_weekends_spread_a_sequence_over_days():
    """email → wait 3 days → email, Monday: the follow-up goes Thursday; Friday's waits for
    Monday."""
    steps = (
        email("intro", "pause"),
        wait("pause", "follow-up", timedelta(days=3)),
        email("follow-up"),
    )
    result = simulate(campaign_of(*steps), members(4), free_sender(), MONDAY, days=10)
    assert result.sent(day(0), "intro") == 4
    assert result.sent(day(3), "follow-up") == 4
    assert result.total == 8
    friday = datetime(2026, 11, 20, 7, 0, tzinfo=UTC)
    result = simulate(campaign_of(*steps), members(4), free_sender(), friday, days=10)
    assert result.sent(date(2026, 11, 20), "intro") == 4
    assert result.sent(date(2026, 11, 23), "follow-up") == 4  # Monday, not Sunday
    assert result.sent(date(2026, 11, 22)) == 0


def test_the_campaign_limit_spreads_messages_over_working_days():
    result = simulate(
        campaign_of(email("intro"), limit=4), members(10), free_sender(), MONDAY, days=7
    )
    assert [result.sent(day(i)) for i in range(7)] == [4, 4, 2, 0, 0, 0, 0]
    assert result.last_day == day(2)


def test_messages_already_sent_today_count_against_the_campaign_limit():
    campaign = replace(campaign_of(email("intro"), limit=4), sent_today=3)
    result = simulate(campaign, members(5), free_sender(), MONDAY, days=3)
    assert [result.sent(day(i)) for i in range(3)] == [1, 4, 0]


def test_a_senders_gap_paces_its_messages():
    """Gap 10 minutes (+ up to 2.5 of jitter), passes every 5: one message per 15 minutes,
    32 in the 8 hours of the window."""
    sender = free_sender(min_gap=timedelta(minutes=10))
    result = simulate(campaign_of(email("intro")), members(40), sender, MONDAY, days=3)
    assert result.sent(day(0)) == 32
    assert result.sent(day(1)) == 8


def test_a_senders_daily_limit_counts_its_utc_day_and_its_earlier_messages():
    sender = free_sender(daily_limit=5, day=day(0), sent=2)
    result = simulate(campaign_of(email("intro")), members(10), sender, MONDAY, days=3)
    assert [result.sent(day(i)) for i in range(3)] == [3, 5, 2]


def test_rotation_shares_the_work_between_senders():
    senders = {
        "alice": SenderState("alice", 3),
        "bob": SenderState("bob", 3),
    }
    used = []
    result = simulate(
        campaign_of(email("intro"), senders=("alice", "bob")),
        members(8),
        senders,
        MONDAY,
        days=2,
        on_send=lambda t, contact, step, sender: used.append(sender),
    )
    assert used[:6] == ["alice", "bob"] * 3
    assert [result.sent(day(0)), result.sent(day(1))] == [6, 2]
    assert senders["alice"].sent == 0, "the caller's sender states are not changed"


def test_every_sender_paused_sends_nothing_and_says_so():
    sender = free_sender(paused=True)
    result = simulate(campaign_of(email("intro")), members(3), sender, MONDAY, days=5)
    assert result.total == 0
    assert result.last_day is None
    assert result.unfinished == 3
    assert result.summary() == "Nothing goes out within a year (3 enrollments wait)."


def test_contacts_get_their_windows_in_their_own_time_zone():
    """A New York contact's 09:00 is 15:00 in Berlin; an invalid zone is the campaign's."""
    people = [
        SimEnrollment(1, {"timezone": "America/New_York"}),
        SimEnrollment(2, {"timezone": "Mars/Olympus"}),
    ]
    sends = {}
    simulate(
        campaign_of(email("intro")),
        people,
        free_sender(),
        MONDAY,
        on_send=lambda t, contact, *_: sends.setdefault(contact, t),
    )
    assert sends[1] == datetime(2026, 11, 16, 9, 0, tzinfo=NEW_YORK)
    assert sends[2] == datetime(2026, 11, 16, 9, 0, tzinfo=BERLIN)


def test_conditions_without_engagement_take_the_else_branch_and_fields_decide():
    steps = (
        email("intro", "engaged?"),
        SimStep(
            "engaged?",
            "condition",
            true_next="warm",
            false_next="plan?",
            condition={"opened": "intro"},
        ),
        SimStep(
            "plan?",
            "condition",
            true_next="warm",
            false_next="cold",
            condition={"field": "plan", "eq": "pro"},
        ),
        email("warm"),
        SimStep("cold", "action", next="cold-mail", action={"tag": "cold"}),
        SimStep("tagged?", "condition", condition={"field": "tags", "contains": "cold"}),
        email("cold-mail"),
    )
    people = [
        SimEnrollment(1, {"attributes": {"plan": "pro"}}),
        SimEnrollment(2, {"attributes": {"plan": "free"}}),
        # Already opened the intro, standing on the condition.
        SimEnrollment(3, {}, step="engaged?", due=MONDAY, events=frozenset({("open", "intro")})),
    ]
    paths: dict[int, list[str]] = {}
    result = simulate(
        campaign_of(*steps, window=ALL_DAY),
        people,
        free_sender(),
        MONDAY,
        on_send=lambda t, contact, step, _: paths.setdefault(contact, []).append(step),
    )
    assert paths == {1: ["intro", "warm"], 2: ["intro", "cold-mail"], 3: ["warm"]}
    assert result.steps == ("intro", "warm", "cold-mail")


def test_an_action_changes_what_later_conditions_see():
    steps = (
        SimStep("tag", "action", next="check", action={"set": {"plan": "pro", "city": "Berlin"}}),
        SimStep(
            "check",
            "condition",
            true_next="pro",
            false_next=None,
            condition={"all": [{"field": "plan", "eq": "pro"}, {"field": "city", "eq": "Berlin"}]},
        ),
        email("pro"),
    )
    result = simulate(campaign_of(*steps, window=ALL_DAY), members(2), free_sender(), MONDAY)
    assert result.sent(day(0), "pro") == 2


def test_an_exit_action_ends_the_sequence():
    steps = (SimStep("leave", "action", next="intro", action={"exit": "not a fit"}), email("intro"))
    result = simulate(campaign_of(*steps), members(2), free_sender(), MONDAY)
    assert result.total == 0
    assert result.unfinished == 0


def test_a_scheduled_campaign_starts_at_its_start():
    start = datetime(2026, 11, 18, 10, 0, tzinfo=BERLIN)
    campaign = campaign_of(email("intro"), status="scheduled", strategy="scheduled", start_at=start)
    sends = []
    result = simulate(
        campaign, members(2), free_sender(), MONDAY, on_send=lambda t, *_: sends.append(t)
    )
    assert sends == [start, start]
    assert result.sent(day(2)) == 2
    assert any("starts at Wed 2026-11-18 10:00 CET" in n for n in result.notes)


def test_nothing_goes_out_at_or_after_the_end():
    end = datetime(2026, 11, 17, 12, 0, tzinfo=BERLIN)
    result = simulate(
        campaign_of(email("intro"), limit=5, end_at=end), members(20), free_sender(), MONDAY
    )
    assert [result.sent(day(i)) for i in range(4)] == [5, 5, 0, 0]
    assert any(
        "10 enrollments are still under way when the campaign ends" in n for n in result.notes
    )


def test_a_draft_is_forecast_as_if_launched_and_a_completed_campaign_sends_nothing():
    draft = simulate(campaign_of(email("intro"), status="draft"), members(2), free_sender(), MONDAY)
    assert draft.total == 2
    assert any("draft" in n for n in draft.notes)
    done = simulate(
        campaign_of(email("intro"), status="completed"), members(2), free_sender(), MONDAY
    )
    assert done.total == 0


def test_an_optimized_campaign_sends_at_each_contacts_open_hour():
    opens = tuple(datetime(2026, 11, d, 14, 20, tzinfo=BERLIN) for d in (2, 3, 4))
    people = [SimEnrollment(1, {}, opens=opens), SimEnrollment(2, {})]
    sends = {}
    simulate(
        campaign_of(email("intro"), strategy="optimized"),
        people,
        free_sender(),
        MONDAY,
        on_send=lambda t, contact, *_: sends.setdefault(contact, t),
    )
    assert sends[1] == datetime(2026, 11, 16, 14, 0, tzinfo=BERLIN)
    assert sends[2] == datetime(2026, 11, 16, 9, 0, tzinfo=BERLIN)


def test_a_retried_message_keeps_its_sender_and_goes_when_the_window_opens():
    person = SimEnrollment(1, {}, step="intro", due=MONDAY, message="queued")
    sends = []
    result = simulate(
        campaign_of(email("intro"), limit=1),
        [person, *members(1)],
        free_sender(),
        MONDAY,
        on_send=lambda t, contact, step, sender: sends.append((contact, sender)),
    )
    # The retry takes no new count: the new member still gets the day's only slot.
    assert sends == [(0, "alice"), (1, None)]
    assert result.sent(day(0)) == 2


def test_the_last_day_is_found_beyond_the_table():
    result = simulate(
        campaign_of(email("intro"), limit=1), members(10), free_sender(), MONDAY, days=3
    )
    assert [r["total"] for r in result.as_rows()] == [1, 1, 1]
    assert result.later == 7
    assert result.last_day == date(2026, 11, 27)  # ten working days
    assert result.summary() == "Last message: Fri 2026-11-27 (7 messages after Wed 2026-11-18)."


def test_the_table_shows_a_row_per_day_and_a_column_per_email_step():
    steps = (
        email("intro", "pause"),
        wait("pause", "follow-up", timedelta(days=1)),
        email("follow-up"),
    )
    result = simulate(campaign_of(*steps), members(2), free_sender(), MONDAY, days=3)
    console = Console(width=120, record=True)
    console.print(render_forecast(result))
    text = console.export_text()
    assert "Forecast of q4-outreach (Europe/Berlin)" in text
    assert "intro" in text and "follow-up" in text and "pause" not in text
    assert "Mon 2026-11-16" in text and "Wed 2026-11-18" in text
    assert "Last message: Tue 2026-11-17." in text
    assert "Assumes no replies" in text
    assert result.as_rows()[1] == {"day": day(1), "intro": 0, "follow-up": 2, "total": 2}


def test_names_from_the_campaign_file_are_shown_as_text_not_markup():
    steps = (email("[bold red]intro[/]", "x\x1b[2Jy"), email("x\x1b[2Jy"))
    campaign = replace(campaign_of(*steps), name="[link=http://evil]q4[/link]")
    result = simulate(campaign, members(1), free_sender(), MONDAY, days=2)
    console = Console(width=160, record=True)
    console.print(render_forecast(result))
    text = console.export_text()
    assert "[bold red]intro[/]" in text
    assert "Forecast of [link=http://evil]q4[/link]" in text
    assert "x\\x1b[2Jy" in text and "\x1b" not in text


def test_a_campaign_that_cannot_run_is_refused_with_the_step():
    with pytest.raises(ForecastError, match="step intro: goes to a missing step 'nope'"):
        simulate(campaign_of(email("intro", "nope")), members(1), free_sender(), MONDAY)
    loop = (
        SimStep("a", "action", next="b", action={"tag": "x"}),
        SimStep("b", "action", next="a", action={"tag": "y"}),
    )
    with pytest.raises(ForecastError, match="loops without waiting"):
        simulate(campaign_of(*loop), members(1), free_sender(), MONDAY)
    with pytest.raises(ForecastError, match="at least one day"):
        simulate(campaign_of(email("intro")), members(1), free_sender(), MONDAY, days=0)


def test_an_email_reached_by_a_send_waits_for_the_next_batch_of_the_pass():
    """Batches of two: A and B get `a` in the first batch; A's `b`, due now, is claimed by the
    second batch and meets the campaign's limit (2)."""
    steps = (email("a", "b"), email("b"))
    sends = []
    simulate(
        campaign_of(*steps, window=ALL_DAY, limit=2),
        [SimEnrollment("A", {}, "a", MONDAY), SimEnrollment("B", {}, "a", MONDAY)],
        free_sender(),
        MONDAY,
        days=2,
        batch_size=2,
        on_send=lambda t, contact, step, _: sends.append((t - MONDAY, contact, step)),
    )
    assert sends[:2] == [(timedelta(0), "A", "a"), (timedelta(0), "B", "a")]
    assert sends[2][1:] == ("A", "b") and sends[2][0] > timedelta(hours=12)


def test_a_senders_gap_turns_into_the_campaign_limit_when_others_fill_the_day():
    """At 23:50 P1 takes the day's only message (alice); P2's own sender bob is in its gap,
    but the campaign's limit is what holds P2: it waits for the next day (00:00), after P3,
    which was due at 23:59:59 and so comes first at the midnight pass."""
    night = datetime(2026, 11, 16, 23, 50, tzinfo=UTC)
    campaign = replace(
        campaign_of(email("a"), email("b", sender="bob"), window=ALL_DAY, limit=1),
        schedule=Schedule(tz=ZoneInfo("UTC"), window=ALL_DAY, daily_limit=1),
    )
    senders = {
        "alice": SenderState("alice", 100),
        "bob": SenderState("bob", 100, timedelta(minutes=15), last=night - timedelta(minutes=10)),
    }
    people = [
        SimEnrollment(5, {}, "a", night),
        SimEnrollment(9, {}, "b", night),
        SimEnrollment(1, {}, "a", night.replace(minute=59, second=59)),
    ]
    sends = []
    simulate(
        campaign,
        people,
        senders,
        night,
        days=3,
        on_send=lambda t, contact, *_: sends.append((t, contact)),
    )
    midnight = datetime(2026, 11, 17, tzinfo=UTC)
    assert sends == [(night, 5), (midnight, 1), (midnight + timedelta(days=1), 9)]


def test_a_large_campaign_is_forecast_in_seconds():
    """20,000 contacts, two senders with a minute's gap, a year's horizon: the passes that
    only defer are moved in bulk, not decided one contact at a time."""
    senders = {
        "alice": SenderState("alice", 500, timedelta(seconds=60)),
        "bob": SenderState("bob", 500, timedelta(seconds=60)),
    }
    steps = (
        email("intro", "pause"),
        wait("pause", "follow-up", timedelta(days=3)),
        email("follow-up"),
    )
    people = [
        SimEnrollment(i, {"timezone": ("Europe/Berlin", "America/New_York", "Asia/Tokyo")[i % 3]})
        for i in range(20_000)
    ]
    started = wall.perf_counter()
    result = simulate(
        campaign_of(*steps, limit=1000, senders=("alice", "bob")), people, senders, MONDAY
    )
    elapsed = wall.perf_counter() - started
    assert result.total + result.later == 40_000
    assert max(result.sent(d) for d in result.days) <= 1000
    assert elapsed < 20, f"took {elapsed:.1f} s"


# --------------------------------------------------------------------------- the reference


def reference(
    campaign: SimCampaign,
    enrollments: list[SimEnrollment],
    senders: dict[str, SenderState],
    now: datetime,
    *,
    every: timedelta,
    stop: datetime,
    batch: int,
) -> list[tuple]:
    """The engine's passes as the issue states them, every pass evaluated, every contact
    decided one by one: what the forecast's bulk moves must reproduce exactly."""
    schedule, steps = campaign.schedule, campaign.steps
    state = rules.CampaignState(
        campaign.id,
        schedule,
        campaign.senders,
        rules.local_day(now, schedule.tz),
        campaign.sent_today,
    )
    senders = {k: replace(v) for k, v in senders.items()}
    people = [
        replace(e, contact={**e.contact, "tags": list(e.contact.get("tags", []))})
        for e in enrollments
    ]
    done: set[int] = set()
    sends = []
    first = next(iter(steps))
    active_from = now
    if campaign.status == "completed":
        return []
    if campaign.status == "scheduled" or (
        campaign.status == "draft" and schedule.start_at and schedule.start_at > now
    ):
        active_from = max(now, schedule.start_at or now)
    end = min(stop, schedule.end_at or stop)

    def enter(p: SimEnrollment, key: str | None, t: datetime) -> None:
        p.message = None
        if key is None:
            done.add(id(p))
            return
        s = steps[key]
        p.step, p.due = key, rules.entering(s.kind, t, s.wait_duration, s.wait_until)

    t = now
    while t < end:
        if t >= active_from:
            for p in people:
                if p.step is None and id(p) not in done:
                    enter(p, first, t)
            for p in sorted(people, key=lambda p: p.contact_id):
                while (
                    id(p) not in done
                    and p.due is not None
                    and p.due <= t
                    and steps[p.step].kind != "email"
                ):
                    s = steps[p.step]
                    if s.kind == "wait":
                        enter(p, s.next, t)
                    elif s.kind == "condition":
                        ok = conditions.evaluate(s.condition, p.contact, set(p.events))
                        enter(p, s.true_next if ok else s.false_next, t)
                    else:
                        action = conditions.parse_action(s.action)
                        if action.kind == "exit":
                            done.add(id(p))
                        else:
                            if action.kind == "tag" and action.name not in p.contact["tags"]:
                                p.contact["tags"].append(action.name)
                            elif action.kind == "untag":
                                p.contact["tags"] = [
                                    x for x in p.contact["tags"] if x != action.name
                                ]
                            elif action.kind == "set":
                                p.contact.update(action.columns)
                                p.contact["attributes"] = {
                                    **p.contact.get("attributes", {}),
                                    **action.attributes,
                                }
                            enter(p, s.next, t)
            while True:
                due = sorted(
                    (
                        p
                        for p in people
                        if id(p) not in done
                        and p.step is not None
                        and p.due is not None
                        and p.due <= t
                        and steps[p.step].kind == "email"
                    ),
                    key=lambda p: (p.due, p.contact_id),
                )[:batch]
                if not due:
                    break
                for p in due:
                    s = steps[p.step]
                    tz = rules.contact_timezone(p.contact.get("timezone"), schedule.tz)
                    hour = (
                        rules.usual_open_hour(p.opens, tz)
                        if schedule.strategy == "optimized"
                        else None
                    )
                    if p.message in ("failed", "bounced"):
                        done.add(id(p))
                        continue
                    if p.message in ("sent", "sending", "unknown"):
                        enter(p, s.next, t)
                        continue
                    if p.message == "queued":
                        if schedule.ended(t):
                            done.add(id(p))
                            continue
                        at, reason = rules.earliest_send(schedule, tz, t, hour)
                        if reason is not None:
                            p.due = at
                            continue
                        sends.append((t, p.contact_id, p.step, None))
                        enter(p, s.next, t)
                        continue
                    d = rules.decide(rules.Item(campaign.id, tz, s.sender, hour), state, senders, t)
                    if isinstance(d, rules.Send):
                        sends.append((t, p.contact_id, p.step, d.sender_id))
                        enter(p, s.next, t)
                    elif isinstance(d, rules.Defer):
                        p.due = d.until
                    else:
                        done.add(id(p))
        t += every
    return sends


ZONE_NAMES = ["Europe/Berlin", "America/New_York", "Asia/Kolkata", "UTC"]


@st.composite
def scenarios(draw):
    now = draw(
        st.datetimes(datetime(2026, 1, 1), datetime(2026, 12, 20), timezones=st.just(UTC))
    ).replace(microsecond=0)
    n = draw(st.integers(1, 5))
    keys = [f"s{i}" for i in range(n)]
    sender_names = ["alice", "bob", "carol"][: draw(st.integers(1, 3))]
    steps = []
    for i, key in enumerate(keys):
        following = keys[i + 1] if i + 1 < n else None
        kind = draw(st.sampled_from(["email", "email", "wait", "condition", "action"]))
        if kind == "email":
            sender = (
                draw(st.none() | st.sampled_from(sender_names)) if draw(st.booleans()) else None
            )
            steps.append(SimStep(key, "email", next=following, sender=sender))
        elif kind == "wait":
            if draw(st.booleans()):
                hours = draw(st.sampled_from([0, 1, 5, 20, 48, 72]))
                steps.append(
                    SimStep(key, "wait", next=following, wait_duration=timedelta(hours=hours))
                )
            else:
                until = now + timedelta(hours=draw(st.integers(-5, 100)))
                steps.append(SimStep(key, "wait", next=following, wait_until=until))
        elif kind == "condition":
            cond = draw(
                st.sampled_from(
                    [
                        {"field": "plan", "eq": "pro"},
                        {"opened": "any"},
                        {"field": "tags", "contains": "hot"},
                        {"any": [{"replied": "any"}, {"field": "plan", "in": ["pro", "team"]}]},
                    ]
                )
            )
            other = draw(st.sampled_from([None, *keys[i + 1 :]]))
            steps.append(
                SimStep(key, "condition", true_next=following, false_next=other, condition=cond)
            )
        else:
            action = draw(
                st.sampled_from(
                    [{"tag": "hot"}, {"set": {"plan": "pro"}}, {"exit": "done"}, {"untag": "hot"}]
                )
            )
            steps.append(SimStep(key, "action", next=following, action=action))
    start_hour = draw(st.integers(0, 20))
    end_hour = draw(st.integers(start_hour + 1, 24))
    window = Window(
        time(start_hour),
        rules.END_OF_DAY if end_hour == 24 else time(end_hour),
        draw(st.frozensets(st.integers(1, 7), min_size=1)),
    )
    strategy = draw(st.sampled_from(["immediate", "scheduled", "optimized"]))
    start_at = now + timedelta(hours=draw(st.integers(-10, 60))) if draw(st.booleans()) else None
    end_at = now + timedelta(hours=draw(st.integers(80, 400))) if draw(st.booleans()) else None
    status = draw(st.sampled_from(["active", "active", "draft", "paused"]))
    if strategy == "scheduled" and start_at and start_at > now and draw(st.booleans()):
        status = "scheduled"
    campaign = SimCampaign(
        id="c",
        name="c",
        status=status,
        schedule=Schedule(
            tz=ZoneInfo(draw(st.sampled_from(ZONE_NAMES))),
            window=window,
            strategy=strategy,
            start_at=start_at,
            end_at=end_at,
            daily_limit=draw(st.sampled_from([1, 3, 10, 500])),
        ),
        steps={s.key: s for s in steps},
        senders=tuple(draw(st.permutations(sender_names))),
        sent_today=draw(st.integers(0, 3)),
    )
    senders = {
        name: SenderState(
            name,
            draw(st.sampled_from([1, 2, 5, 100])),
            timedelta(seconds=draw(st.sampled_from([0, 60, 300, 900, 3600]))),
            paused=draw(st.booleans()) and draw(st.booleans()),
            day=rules.utc_day(now),
            sent=draw(st.integers(0, 2)),
            last=now - timedelta(seconds=draw(st.integers(1, 4000)))
            if draw(st.booleans())
            else None,
        )
        for name in sender_names
    }
    people = []
    for cid in draw(st.sets(st.integers(0, 10_000), min_size=1, max_size=25)):
        contact = {
            "timezone": draw(st.sampled_from([*ZONE_NAMES, None, "", "Nowhere/Land"])),
            "attributes": {"plan": draw(st.sampled_from(["pro", "free", "team"]))},
            "tags": draw(st.sampled_from([[], ["hot"]])),
        }
        opens = tuple(
            now - timedelta(days=d, hours=h)
            for d, h in draw(st.lists(st.tuples(st.integers(1, 9), st.integers(0, 23)), max_size=4))
        )
        events = frozenset(
            draw(st.sets(st.sampled_from([("open", None), ("reply", None)]), max_size=1))
        )
        if draw(st.booleans()):
            people.append(SimEnrollment(cid, contact, opens=opens, events=events))
        else:
            key = draw(st.sampled_from(keys))
            message = (
                draw(st.sampled_from([None, None, "queued", "sent", "failed"]))
                if steps[keys.index(key)].kind == "email"
                else None
            )
            due = now + timedelta(minutes=draw(st.integers(-120, 3000)))
            people.append(SimEnrollment(cid, contact, key, due, events, opens, message))
    every = timedelta(minutes=draw(st.sampled_from([5, 15, 60])))
    batch = draw(st.sampled_from([1, 3, 500]))
    return campaign, people, senders, now, every, batch


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios())
def test_the_forecast_sends_exactly_what_a_pass_by_pass_run_sends(scenario):
    campaign, people, senders, now, every, batch = scenario
    days = 12
    horizon = timedelta(days=days)
    expected = reference(
        campaign, people, senders, now, every=every, stop=now + horizon, batch=batch
    )
    sends: list[tuple] = []
    result = simulate(
        campaign,
        people,
        senders,
        now,
        days=days + 2,
        pass_every=every,
        batch_size=batch,
        horizon=horizon,
        on_send=lambda *message: sends.append(message),
    )
    assert sends == expected
    per_day: dict[tuple[date, str], int] = {}
    for t, _, step, _ in expected:
        key = (rules.local_day(t, campaign.schedule.tz), step)
        per_day[key] = per_day.get(key, 0) + 1
    assert dict(result.counts) == per_day


# --------------------------------------------------------------------------- the loader


@pytest.fixture
def tenant(database, tmp_path: Path):
    from engine.campaigns import Step, create_campaign
    from engine.db import tenant_transaction
    from engine.ingest import ingest_file
    from engine.senders import create_sender
    from engine.tenants import create_tenant
    from tests.factories import write_csv

    tenant_id, _ = create_tenant(database.owner, "acme")
    now = MONDAY
    with tenant_transaction(database.app, tenant_id) as conn:
        sender = create_sender(
            conn, "alice@acme.example", "Alice", daily_limit=100, min_gap_seconds=0
        )
        campaign = create_campaign(
            conn,
            "q4-outreach",
            now,
            list_name="leads",
            sender_id=sender,
            timezone="Europe/Berlin",
            send_window=("09:00", "17:00"),
            send_days=(1, 2, 3, 4, 5),
            steps=[
                Step("email", name="intro", subject="Hi", body_text="Hello"),
                Step("wait", wait=timedelta(days=2)),
                Step("email", name="follow-up", subject="Again", body_text="Hello again"),
            ],
        )
    rows = [[f"c{i}@example.com", f"F{i}", f"L{i}", "Acme", "pro"] for i in range(6)]
    ingest_file(database.app, tenant_id, write_csv(tmp_path / "leads.csv", rows), "leads", now)

    def connect():
        return tenant_transaction(database.app, tenant_id)

    with connect() as conn:
        keys = conn.execute(STEP_KEYS, {"id": campaign}).scalars().all()
    return connect, campaign, sender, keys


STEP_KEYS = sa.text(
    "select key from app.campaign_steps where campaign_id = :id order by step_order"
)


def test_a_draft_campaign_is_forecast_from_its_list(tenant):
    connect, campaign, _, (intro, _, follow_up) = tenant
    with connect() as conn:
        result = forecast(conn, campaign, MONDAY, days=5)
    assert result.steps == (intro, follow_up)
    assert result.sent(day(0), intro) == 6
    assert result.sent(day(2), follow_up) == 6
    assert result.total == 12
    assert any("draft" in n for n in result.notes)


ENROLL = sa.text(
    """
    insert into app.campaign_contacts
        (tenant_id, campaign_id, contact_id, status, current_step_id, next_run_at)
    select c.tenant_id, :campaign, c.id, 'active', s.id, :due
    from app.contacts c, app.campaign_steps s
    where lower(c.email) = :email and s.campaign_id = :campaign and s.key = :step
    returning id, contact_id, current_step_id
    """
)
QUEUED = sa.text(
    """
    insert into app.sent_emails
        (tenant_id, campaign_contact_id, campaign_id, step_id, contact_id, sender_account_id,
         recipient_email, subject, message_id, status, attempts, queued_at, sent_at)
    values (app.current_tenant_id(), :enrollment, :campaign, :step, :contact, :sender,
            'x@example.com', 'Hi', :message_id, 'sent', 1, :at, :at)
    """
)


def test_the_loader_sees_enrollments_todays_messages_and_stopped_contacts(tenant):
    """Three contacts already had the intro today (limit 4: one more today); one replied
    (stop on reply: it exits), one is suppressed; the last is not enrolled yet."""
    connect, campaign, sender, (intro, pause, follow_up) = tenant
    now = MONDAY + timedelta(hours=3)  # 11:00 in Berlin
    with connect() as conn:
        conn.execute(
            sa.text("update app.campaign_settings set daily_limit = 4 where campaign_id = :id"),
            {"id": campaign},
        )
        conn.execute(
            sa.text("update app.campaigns set status = 'active' where id = :id"), {"id": campaign}
        )
        for i in range(3):
            row = conn.execute(
                ENROLL,
                {
                    "campaign": campaign,
                    "email": f"c{i}@example.com",
                    "step": pause,
                    "due": now + timedelta(days=2),
                },
            ).one()
            intro_id = conn.execute(
                sa.text("select id from app.campaign_steps where campaign_id = :c and key = :k"),
                {"c": campaign, "k": intro},
            ).scalar_one()
            conn.execute(
                QUEUED,
                {
                    "enrollment": row.id,
                    "campaign": campaign,
                    "step": intro_id,
                    "contact": row.contact_id,
                    "sender": sender,
                    "message_id": f"m{i}@acme.example",
                    "at": now - timedelta(hours=1),
                },
            )
        replied = conn.execute(
            ENROLL, {"campaign": campaign, "email": "c3@example.com", "step": intro, "due": now}
        ).one()
        conn.execute(
            sa.text(
                """
                insert into app.email_events
                    (tenant_id, event_type, contact_id, campaign_id, occurred_at, dedup_key)
                values (app.current_tenant_id(), 'reply', :contact, :campaign, :at, 'r1')
                """
            ),
            {"contact": replied.contact_id, "campaign": campaign, "at": now},
        )
        conn.execute(
            sa.text(
                "insert into app.suppressions (tenant_id, email, reason) "
                "values (app.current_tenant_id(), 'C4@example.com', 'unsubscribe')"
            )
        )
        result = forecast(conn, campaign, now, days=5)
    # c5 (not enrolled yet) gets the intro today: the 4th of the day.
    assert result.sent(day(0), intro) == 1
    assert result.sent(day(2), follow_up) == 4  # c0..c2 after their wait, c5 too
    assert result.total == 5


EVENT = sa.text(
    """
    insert into app.email_events
        (tenant_id, event_type, contact_id, campaign_id, step_id, occurred_at, dedup_key,
         machine_reason)
    select app.current_tenant_id(), :type, c.id, :campaign, s.id, :at, :key, :machine
    from app.contacts c, app.campaign_steps s
    where lower(c.email) = :email and s.campaign_id = :campaign and s.key = :step
    """
)


def test_the_loader_reads_the_engagement_of_enrollments_under_way_only(tenant):
    """What conditions see: each enrollment's own opens, clicks and replies in this campaign, by
    step; a machine's open is not one; an enrollment that has finished is not loaded at all
    (nor its events). An optimized campaign also reads each one's opens, and the opens of the
    list members a pass would enroll."""
    connect, campaign, _, (intro, pause, _) = tenant
    now = MONDAY
    with connect() as conn:
        for i in range(3):
            conn.execute(
                ENROLL,
                {"campaign": campaign, "email": f"c{i}@example.com", "step": pause, "due": now},
            )
        conn.execute(
            sa.text(
                "update app.campaign_contacts set status = 'completed', current_step_id = null "
                "where contact_id = (select id from app.contacts where email = 'c2@example.com')"
            )
        )
        for n, (email, kind, machine) in enumerate(
            [
                ("c0@example.com", "open", None),
                ("c0@example.com", "open", None),  # the same (type, step) twice: one
                ("c0@example.com", "click", None),
                ("c1@example.com", "open", "apple_mpp"),
                ("c2@example.com", "reply", None),
                ("c3@example.com", "open", None),  # not enrolled yet: an open hour all the same
            ]
        ):
            conn.execute(
                EVENT,
                {
                    "type": kind,
                    "email": email,
                    "campaign": campaign,
                    "step": intro,
                    "at": now - timedelta(hours=1),
                    "key": f"e{n}",
                    "machine": machine,
                },
            )
        conn.execute(
            sa.text("update app.campaigns set send_strategy = 'optimized' where id = :id"),
            {"id": campaign},
        )
        _, enrollments, _ = load(conn, campaign, now)
        emails = dict(
            conn.execute(sa.text("select id, lower(email) from app.contacts")).tuples().all()
        )
    under_way = {emails[e.contact_id]: e for e in enrollments if e.step is not None}
    assert set(under_way) == {"c0@example.com", "c1@example.com"}
    assert under_way["c0@example.com"].events == {("open", intro), ("click", intro)}
    assert under_way["c1@example.com"].events == frozenset()
    # an optimized campaign's open hours: a person's opens, of enrollments and members alike
    hour_ago = now - timedelta(hours=1)
    assert under_way["c0@example.com"].opens == (hour_ago, hour_ago)
    assert under_way["c1@example.com"].opens == ()
    # c2 finished; c3..c5 are members a pass would enroll, with no engagement in the campaign
    members = {emails[e.contact_id]: e for e in enrollments if e.step is None}
    assert sorted(members) == ["c3@example.com", "c4@example.com", "c5@example.com"]
    assert members["c3@example.com"].events == frozenset()
    assert members["c3@example.com"].opens == (hour_ago,)


def test_an_unknown_campaign_name_is_an_error_naming_it(tenant):
    connect, *_ = tenant
    with connect() as conn, pytest.raises(ForecastError, match="no campaign named 'nope'"):
        forecast_named(conn, "nope", MONDAY)
