"""The scheduling rules (engine/sequence/rules.py): windows across DST, days, strategies,
limits, rotation, jitter and backoff. Pure functions: no database, a fixed clock."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.sequence import rules
from engine.sequence.rules import (
    ALL_DAY,
    ALL_DAYS,
    CampaignState,
    Defer,
    Exit,
    Item,
    Schedule,
    Send,
    SenderState,
    Window,
)

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
UTC_ZONE = ZoneInfo("UTC")
OFFICE = Window(time(9), time(17), rules.WEEKDAYS)


def at(zone: ZoneInfo, *args: int) -> datetime:
    """A local wall-clock time (the first occurrence when the clocks go back)."""
    return datetime(*args, tzinfo=zone)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# --------------------------------------------------------------------------- windows


def test_a_time_inside_the_window_is_its_own_next_open():
    t = at(BERLIN, 2026, 11, 18, 10, 15)  # a Wednesday
    assert rules.in_window(OFFICE, BERLIN, t)
    assert rules.next_open(OFFICE, BERLIN, t) == t


def test_after_the_window_closes_the_next_open_is_the_next_mornings_start():
    assert rules.next_open(OFFICE, BERLIN, at(BERLIN, 2026, 11, 18, 17, 0)) == at(
        BERLIN, 2026, 11, 19, 9, 0
    )
    assert rules.next_open(OFFICE, BERLIN, at(BERLIN, 2026, 11, 18, 6, 0)) == at(
        BERLIN, 2026, 11, 18, 9, 0
    )


def test_friday_evening_waits_for_monday_morning():
    assert rules.next_open(OFFICE, BERLIN, at(BERLIN, 2026, 11, 20, 18, 0)) == at(
        BERLIN, 2026, 11, 23, 9, 0
    )


def test_a_window_is_local_to_its_time_zone():
    """10:00 UTC on a Wednesday is 05:00 in New York: wait until 09:00 there (14:00 UTC)."""
    t = utc(2026, 11, 18, 10, 0)
    assert rules.in_window(OFFICE, BERLIN, t)
    assert rules.next_open(OFFICE, NEW_YORK, t) == utc(2026, 11, 18, 14, 0)


def test_only_the_allowed_days_open():
    tue_thu = Window(time(9), time(17), frozenset({2, 4}))
    wednesday = at(BERLIN, 2026, 11, 18, 10, 0)
    assert not rules.in_window(tue_thu, BERLIN, wednesday)
    assert rules.next_open(tue_thu, BERLIN, wednesday) == at(BERLIN, 2026, 11, 19, 9, 0)
    sunday_only = Window(time(9), time(17), frozenset({7}))
    assert rules.next_open(sunday_only, BERLIN, wednesday) == at(BERLIN, 2026, 11, 22, 9, 0)


def test_the_all_day_window_is_open_around_the_clock_on_its_days():
    weekdays = Window(time(0), rules.END_OF_DAY, rules.WEEKDAYS)
    assert weekdays.all_day
    assert rules.in_window(weekdays, BERLIN, at(BERLIN, 2026, 11, 18, 0, 0))
    assert rules.in_window(weekdays, BERLIN, at(BERLIN, 2026, 11, 20, 23, 59, 59))
    assert rules.next_open(weekdays, BERLIN, at(BERLIN, 2026, 11, 21, 12, 0)) == at(
        BERLIN, 2026, 11, 23, 0, 0
    )
    assert rules.in_window(ALL_DAY, BERLIN, at(BERLIN, 2026, 11, 21, 12, 0))


def test_a_window_may_end_at_midnight():
    evening = Window(time(18), rules.END_OF_DAY, ALL_DAYS)
    assert rules.in_window(evening, BERLIN, at(BERLIN, 2026, 11, 18, 23, 59, 59, 999999))
    assert not rules.in_window(evening, BERLIN, at(BERLIN, 2026, 11, 19, 0, 0))


def test_spring_forward_in_berlin_shifts_the_window_to_summer_time():
    """On 2026-03-29 Berlin goes from 02:00 CET to 03:00 CEST: 09:00 is 07:00 UTC, not 08:00."""
    every_day = Window(time(9), time(17), ALL_DAYS)
    assert rules.next_open(every_day, BERLIN, utc(2026, 3, 28, 17, 0)) == utc(2026, 3, 29, 7, 0)
    assert rules.next_open(every_day, BERLIN, utc(2026, 3, 27, 17, 0)) == utc(2026, 3, 28, 8, 0)
    day_start, day_end = rules.day_bounds(date(2026, 3, 29), BERLIN)
    assert day_end - day_start == timedelta(hours=23)


def test_a_window_opening_in_the_skipped_hour_opens_when_the_clocks_jump():
    night = Window(time(2, 30), time(4), ALL_DAYS)
    opened = rules.next_open(night, BERLIN, utc(2026, 3, 28, 22, 0))
    assert opened == utc(2026, 3, 29, 1, 0)  # 03:00 CEST, the first local time past 02:30
    assert opened.astimezone(BERLIN).time() == time(3, 0)


def test_a_window_entirely_in_the_skipped_hour_does_not_open_that_day():
    skipped = Window(time(2, 15), time(2, 45), ALL_DAYS)
    assert rules.next_open(skipped, BERLIN, utc(2026, 3, 28, 22, 0)) == at(
        BERLIN, 2026, 3, 30, 2, 15
    )


def test_a_window_in_the_repeated_hour_opens_twice_when_the_clocks_go_back():
    """On 2026-10-25 Berlin lives 02:00-03:00 twice (CEST, then CET)."""
    repeated = Window(time(2), time(2, 30), ALL_DAYS)
    assert rules.next_open(repeated, BERLIN, utc(2026, 10, 24, 23, 0)) == utc(2026, 10, 25, 0, 0)
    # Closed at 02:40 CEST, open again at 02:00 CET.
    assert not rules.in_window(repeated, BERLIN, utc(2026, 10, 25, 0, 40))
    assert rules.next_open(repeated, BERLIN, utc(2026, 10, 25, 0, 40)) == utc(2026, 10, 25, 1, 0)
    assert rules.next_open(repeated, BERLIN, utc(2026, 10, 25, 1, 40)) == at(
        BERLIN, 2026, 10, 26, 2, 0
    )
    day_start, day_end = rules.day_bounds(date(2026, 10, 25), BERLIN)
    assert day_end - day_start == timedelta(hours=25)


def test_new_york_office_hours_follow_its_own_dst_dates():
    """US clocks change on 2026-03-08 and 2026-11-01, weeks apart from Europe's."""
    assert rules.next_open(OFFICE, NEW_YORK, utc(2026, 3, 6, 22, 0)) == utc(2026, 3, 9, 13, 0)
    assert rules.next_open(OFFICE, NEW_YORK, utc(2026, 3, 5, 22, 0)) == utc(2026, 3, 6, 14, 0)
    assert rules.next_open(OFFICE, NEW_YORK, utc(2026, 10, 30, 22, 0)) == utc(2026, 11, 2, 14, 0)
    # 01:30 happens twice on 2026-11-01: both are in a 01:00-02:00 window.
    early = Window(time(1), time(2), ALL_DAYS)
    assert rules.in_window(early, NEW_YORK, utc(2026, 11, 1, 5, 30))  # 01:30 EDT
    assert rules.in_window(early, NEW_YORK, utc(2026, 11, 1, 6, 30))  # 01:30 EST
    # On 2026-03-08 02:00-03:00 does not exist; 01:00 EST is 06:00 UTC, 01:00 EDT is 05:00.
    assert rules.next_open(early, NEW_YORK, utc(2026, 3, 8, 5, 0)) == utc(2026, 3, 8, 6, 0)
    assert rules.next_open(early, NEW_YORK, utc(2026, 3, 8, 7, 0)) == utc(2026, 3, 9, 5, 0)
    skipped = Window(time(2), time(2, 30), ALL_DAYS)
    assert rules.next_open(skipped, NEW_YORK, utc(2026, 3, 8, 5, 0)) == utc(2026, 3, 9, 6, 0)


def test_a_naive_time_is_refused_rather_than_guessed():
    with pytest.raises(ValueError, match="no time zone"):
        rules.next_open(OFFICE, BERLIN, datetime(2026, 11, 18, 10, 0))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("09:00-17:00", (time(9), time(17))),
        (" 9:30 - 18:00 ", (time(9, 30), time(18))),
        ("00:00-24:00", (time(0), rules.END_OF_DAY)),
        ("18:00-24:00", (time(18), rules.END_OF_DAY)),
    ],
)
def test_windows_parse_from_the_campaign_file_form(text, expected):
    assert rules.parse_window(text) == expected


def test_windows_print_back_as_written():
    for text in ("09:00-17:00", "00:00-24:00", "18:30-24:00"):
        assert rules.format_window(Window(*rules.parse_window(text))) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("9-17", "not a time"),
        ("09:00", "not of the form"),
        ("17:00-09:00", "crosses midnight"),
        ("09:00-09:00", "empty"),
        ("25:00-26:00", "not a time of day"),
        ("24:00-24:00", "not a time of day"),
        ("09:60-10:00", "not a time of day"),
    ],
)
def test_a_bad_window_is_refused_with_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=message):
        rules.parse_window(text)


def test_a_window_needs_real_weekdays():
    with pytest.raises(ValueError, match="at least one day"):
        Window(time(9), time(17), frozenset())
    with pytest.raises(ValueError, match=r"ISO weekdays .* got \[0, 8\]"):
        Window(time(9), time(17), frozenset({0, 1, 8}))


def test_day_names_parse_and_print():
    assert rules.parse_days(["mon", "Tue", "friday"]) == frozenset({1, 2, 5})
    assert rules.format_days({7, 1}) == ["mon", "sun"]
    with pytest.raises(ValueError, match="unknown day 'mo'"):
        rules.parse_days(["mo"])


# Zones with the odd cases: 30-minute DST (Lord Howe), midnight transitions (Havana, Santiago),
# southern-hemisphere DST, quarter-hour offsets (Chatham, Kathmandu), no DST at all.
ZONES = [
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",
    "America/Havana",
    "America/Santiago",
    "Pacific/Chatham",
    "Asia/Kathmandu",
    "UTC",
]
# Around the DST changes of 2026 in those zones.
CHANGES = [
    utc(2026, 3, 29, 1),
    utc(2026, 10, 25, 1),
    utc(2026, 3, 8, 7),
    utc(2026, 11, 1, 6),
    utc(2026, 4, 4, 15),
    utc(2026, 10, 3, 16),
    utc(2026, 4, 5, 3),
    utc(2026, 9, 6, 4),
]


@st.composite
def windows(draw) -> Window:
    minutes = st.integers(0, 24 * 60 - 1)
    start, end = sorted(draw(st.lists(minutes, min_size=2, max_size=2, unique=True)))
    if draw(st.booleans()):
        end = 24 * 60  # the end of the day
    days = draw(st.frozensets(st.integers(1, 7), min_size=1))
    end_time = rules.END_OF_DAY if end == 24 * 60 else time(*divmod(end, 60))
    return Window(time(*divmod(start, 60)), end_time, days)


instants = st.one_of(
    st.datetimes(datetime(2025, 1, 1), datetime(2027, 12, 31), timezones=st.just(UTC)),
    st.builds(
        lambda base, seconds: base + timedelta(seconds=seconds),
        st.sampled_from(CHANGES),
        st.integers(-3 * 86400, 3 * 86400),
    ),
)


@settings(max_examples=300, deadline=None)
@given(window=windows(), zone=st.sampled_from(ZONES), t=instants)
def test_next_open_is_the_first_instant_in_the_window_at_or_after_t(window, zone, t):
    tz = ZoneInfo(zone)
    opened = rules.next_open(window, tz, t)
    assert opened >= t
    assert rules.in_window(window, tz, opened)
    if opened > t:
        # Nothing in between: windows and offsets change on whole minutes, so every minute
        # boundary between t and the answer, and the instant just before it, are closed.
        assert not rules.in_window(window, tz, opened - timedelta(microseconds=1))
        probe = t.replace(second=0, microsecond=0) + timedelta(minutes=1)
        while probe < opened:
            assert not rules.in_window(window, tz, probe), probe
            probe += timedelta(minutes=1)


@settings(max_examples=200, deadline=None)
@given(zone=st.sampled_from(ZONES), t=instants)
def test_a_local_day_runs_from_its_first_instant_to_the_next_days_first(zone, t):
    tz = ZoneInfo(zone)
    day = rules.local_day(t, tz)
    first, end = rules.day_bounds(day, tz)
    assert first <= t < end
    assert rules.local_day(first, tz) == day
    assert rules.local_day(end - timedelta(microseconds=1), tz) == day
    assert rules.local_day(end, tz) == day + timedelta(days=1)
    assert rules.next_day_start(t, tz) == end
    assert timedelta(hours=22) <= end - first <= timedelta(hours=26)


# --------------------------------------------------------------------------- time zones


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("America/New_York", "America/New_York"),
        (" Asia/Tokyo ", "Asia/Tokyo"),
        ("", "Europe/Berlin"),
        (None, "Europe/Berlin"),
        ("Europe/Berln", "Europe/Berlin"),
        ("Europe", "Europe/Berlin"),
        ("../../etc/passwd", "Europe/Berlin"),
        ("/etc/localtime", "Europe/Berlin"),
        ("localtime", "Europe/Berlin"),
        ("zone.tab", "Europe/Berlin"),
        ("GMT+2\x00", "Europe/Berlin"),
        ("x" * 300, "Europe/Berlin"),
        (42, "Europe/Berlin"),
    ],
)
def test_a_contact_without_a_valid_iana_zone_uses_the_campaigns(name, expected):
    assert rules.contact_timezone(name, BERLIN).key == expected


# --------------------------------------------------------------------------- strategies


def test_the_usual_open_hour_is_the_most_frequent_local_hour_of_the_opens():
    opens = [utc(2026, 11, 2, 7, 10), utc(2026, 11, 3, 7, 50), utc(2026, 11, 4, 15, 0)]
    assert rules.usual_open_hour(opens, BERLIN) == 8  # 07:xx UTC is 08:xx in Berlin in winter
    assert rules.usual_open_hour(opens, UTC_ZONE) == 7


def test_one_open_is_not_a_habit():
    assert rules.usual_open_hour([utc(2026, 11, 2, 7)], BERLIN) is None
    assert rules.usual_open_hour([], BERLIN) is None


def test_tied_open_hours_go_to_the_earliest():
    opens = [utc(2026, 11, 2, 14), utc(2026, 11, 3, 11), utc(2026, 11, 4, 14), utc(2026, 11, 5, 11)]
    assert rules.usual_open_hour(opens, UTC_ZONE) == 11


def test_optimized_sends_go_at_the_usual_open_hour_inside_the_window():
    schedule = Schedule(tz=BERLIN, window=OFFICE, strategy="optimized")
    wednesday_9 = at(BERLIN, 2026, 11, 18, 9, 0)
    assert rules.earliest_send(schedule, BERLIN, wednesday_9, open_hour=14) == (
        at(BERLIN, 2026, 11, 18, 14, 0),
        rules.WINDOW,
    )
    # Within the hour: now.
    t = at(BERLIN, 2026, 11, 18, 14, 40)
    assert rules.earliest_send(schedule, BERLIN, t, open_hour=14) == (t, None)
    # Past it: tomorrow at that hour.
    assert rules.earliest_send(schedule, BERLIN, at(BERLIN, 2026, 11, 18, 15, 0), 14)[0] == at(
        BERLIN, 2026, 11, 19, 14, 0
    )


def test_optimized_sends_without_a_usual_hour_in_the_window_go_at_the_windows_start():
    schedule = Schedule(tz=BERLIN, window=Window(time(9, 30), time(17)), strategy="optimized")
    t = at(BERLIN, 2026, 11, 18, 11, 0)
    expected = at(BERLIN, 2026, 11, 19, 9, 30)
    assert rules.earliest_send(schedule, BERLIN, t, open_hour=22)[0] == expected
    assert rules.earliest_send(schedule, BERLIN, t, open_hour=None)[0] == expected
    assert rules.optimized_window(schedule.window, None) == Window(time(9, 30), time(10, 30))
    # An hour that only partly overlaps the window keeps the overlap.
    assert rules.optimized_window(schedule.window, 9) == Window(time(9, 30), time(10))
    assert rules.optimized_window(Window(time(9), rules.END_OF_DAY), 23) == Window(
        time(23), rules.END_OF_DAY
    )


def test_a_scheduled_campaign_sends_nothing_before_its_start():
    start = at(BERLIN, 2026, 12, 1, 9, 0)
    schedule = Schedule(tz=BERLIN, window=OFFICE, strategy="scheduled", start_at=start)
    assert rules.earliest_send(schedule, BERLIN, at(BERLIN, 2026, 11, 18, 10, 0)) == (
        start,
        rules.SCHEDULED,
    )
    # A contact in New York waits for its own window after the start.
    assert rules.earliest_send(schedule, NEW_YORK, start) == (
        at(NEW_YORK, 2026, 12, 1, 9, 0),
        "window",
    )
    # An immediate campaign ignores start_at.
    immediate = Schedule(tz=BERLIN, window=OFFICE, start_at=start)
    t = at(BERLIN, 2026, 11, 18, 10, 0)
    assert rules.earliest_send(immediate, BERLIN, t) == (t, None)


def test_nothing_goes_out_at_or_after_end_at():
    end = at(BERLIN, 2026, 12, 1, 12, 0)
    schedule = Schedule(tz=BERLIN, window=OFFICE, end_at=end)
    assert not schedule.ended(end - timedelta(microseconds=1))
    assert schedule.ended(end)
    campaign = CampaignState("c", schedule, ("s",))
    senders = {"s": SenderState("s", daily_limit=10)}
    assert rules.decide(Item("c", BERLIN), campaign, senders, end) == Exit(rules.CAMPAIGN_ENDED)


def test_a_schedule_refuses_bad_settings():
    with pytest.raises(ValueError, match="unknown send strategy 'asap'"):
        Schedule(strategy="asap")
    with pytest.raises(ValueError, match="daily limit"):
        Schedule(daily_limit=0)
    with pytest.raises(ValueError, match="end_at must be after"):
        Schedule(start_at=utc(2026, 12, 2), end_at=utc(2026, 12, 1))


# --------------------------------------------------------------------------- throttles


def campaign_of(*senders: str, limit: int = 500, window: Window = ALL_DAY) -> CampaignState:
    return CampaignState("c", Schedule(tz=BERLIN, window=window, daily_limit=limit), senders)


def test_rotation_takes_the_least_recently_used_sender_ties_by_position():
    now = utc(2026, 11, 18, 10, 0)
    senders = {
        "a": SenderState("a", 100, last=now - timedelta(minutes=5)),
        "b": SenderState("b", 100),  # never used: first
        "c": SenderState("c", 100),
    }
    decisions = rules.allocate(
        [Item("c", BERLIN)] * 4, {"c": campaign_of("a", "b", "c")}, senders, now
    )
    # b and c never sent; then a (5 minutes ago); then all were last used now: fewest today.
    assert decisions == [Send("b"), Send("c"), Send("a"), Send("a")]
    more = rules.allocate([Item("c", BERLIN)] * 3, {"c": campaign_of("a", "b", "c")}, senders, now)
    assert more == [Send("b"), Send("c"), Send("a")]
    assert [senders[s].sent for s in "abc"] == [3, 2, 2]


def test_rotation_skips_paused_senders_and_senders_at_their_limit():
    now = utc(2026, 11, 18, 10, 0)
    senders = {
        "a": SenderState("a", 100, paused=True),
        "b": SenderState("b", 3, day=date(2026, 11, 18), sent=3),
        "c": SenderState("c", 100),
    }
    decisions = rules.allocate(
        [Item("c", BERLIN)] * 2, {"c": campaign_of("a", "b", "c")}, senders, now
    )
    assert decisions == [Send("c"), Send("c")]


def test_a_senders_limit_counts_its_utc_day():
    """Yesterday's (UTC) messages do not count today, even at 00:30 in Berlin."""
    senders = {"s": SenderState("s", 3, day=date(2026, 11, 17), sent=3)}
    now = utc(2026, 11, 17, 23, 30)  # 00:30 on the 18th in Berlin, still the 17th in UTC
    assert rules.decide(Item("c", BERLIN), campaign_of("s"), senders, now) == Defer(
        rules.SENDER_LIMIT, utc(2026, 11, 18, 0, 0)
    )
    assert rules.decide(Item("c", BERLIN), campaign_of("s"), senders, utc(2026, 11, 18, 0, 0)) == (
        Send("s")
    )


def test_a_sender_at_its_limit_defers_to_the_next_utc_midnight_inside_the_window():
    senders = {"s": SenderState("s", 1, day=date(2026, 11, 18), sent=1)}
    decision = rules.decide(
        Item("c", BERLIN), campaign_of("s", window=OFFICE), senders, utc(2026, 11, 18, 10)
    )
    assert decision == Defer(rules.SENDER_LIMIT, at(BERLIN, 2026, 11, 19, 9, 0))


def test_every_sender_paused_looks_again_a_day_later():
    senders = {"a": SenderState("a", 10, paused=True), "b": SenderState("b", 10, paused=True)}
    now = utc(2026, 11, 18, 10)
    decision = rules.decide(Item("c", BERLIN), campaign_of("a", "b"), senders, now)
    assert decision == Defer(rules.SENDER_PAUSED, now + timedelta(days=1))
    # Inside the contact's window: Friday's recheck waits for Monday.
    friday = campaign_of("a", "b", window=OFFICE)
    assert rules.decide(Item("c", BERLIN), friday, senders, utc(2026, 11, 20, 10)) == Defer(
        rules.SENDER_PAUSED, at(BERLIN, 2026, 11, 23, 9, 0)
    )


def test_the_minimum_gap_with_its_jitter_defers_to_the_first_free_sender():
    now = utc(2026, 11, 18, 10, 0)
    gap = timedelta(minutes=10)
    a = SenderState("a", 100, gap, last=now - timedelta(minutes=2))
    b = SenderState("b", 100, gap, last=now - timedelta(minutes=4))
    decision = rules.decide(Item("c", BERLIN), campaign_of("a", "b"), {"a": a, "b": b}, now)
    expected = b.last + gap + rules.jitter("b", b.last, gap)
    assert decision == Defer(rules.SENDER_GAP, expected)
    assert now + timedelta(minutes=6) <= expected < now + timedelta(minutes=8, seconds=30)
    assert b.free_at() == expected
    assert rules.decide(Item("c", BERLIN), campaign_of("a", "b"), {"a": a, "b": b}, expected) == (
        Send("b")
    )


def test_a_steps_own_sender_overrides_the_rotation():
    now = utc(2026, 11, 18, 10, 0)
    senders = {"a": SenderState("a", 10), "x": SenderState("x", 10, last=now - timedelta(days=1))}
    item = Item("c", BERLIN, step_sender="x")
    assert rules.allocate([item, item], {"c": campaign_of("a")}, senders, now) == [
        Send("x"),
        Send("x"),
    ]
    senders["x"].paused = True
    assert rules.decide(item, campaign_of("a"), senders, now) == Defer(
        rules.SENDER_PAUSED, now + timedelta(days=1)
    )


def test_a_campaign_without_a_sender_ends_the_enrollment_with_the_reason():
    assert rules.decide(Item("c", BERLIN), campaign_of(), {}, utc(2026, 11, 18, 10)) == Exit(
        rules.NO_SENDER
    )


def test_the_campaign_limit_counts_the_campaigns_local_day_and_defers_to_the_next():
    """Limit 2 per Berlin day: the third message waits for tomorrow's window."""
    campaign = campaign_of("s", limit=2, window=OFFICE)
    senders = {"s": SenderState("s", 100)}
    now = at(BERLIN, 2026, 11, 18, 16, 0)
    decisions = rules.allocate(
        [Item("c", NEW_YORK)] * 3, {"c": campaign}, senders, utc(2026, 11, 18, 15)
    )
    assert decisions[:2] == [Send("s"), Send("s")]
    # Tomorrow starts at 00:00 Berlin; the contact's window (New York) opens at 09:00 there.
    assert decisions[2] == Defer(rules.CAMPAIGN_LIMIT, at(NEW_YORK, 2026, 11, 19, 9, 0))
    assert campaign.sent_on(date(2026, 11, 18)) == 2
    # The count is the campaign's day: just past midnight in Berlin it starts again.
    assert not campaign.at_limit(at(BERLIN, 2026, 11, 19, 0, 0))
    assert campaign.at_limit(now)


def test_a_message_outside_the_contacts_window_is_deferred_before_any_count_is_taken():
    campaign = campaign_of("s", window=OFFICE)
    senders = {"s": SenderState("s", 100)}
    decision = rules.decide(Item("c", NEW_YORK), campaign, senders, utc(2026, 11, 18, 10))
    assert decision == Defer(rules.WINDOW, at(NEW_YORK, 2026, 11, 18, 9, 0))
    assert campaign.sent == 0 and senders["s"].sent == 0 and senders["s"].last is None


# --------------------------------------------------------------------------- jitter, retries, waits


@given(
    sender=st.uuids(),
    last=st.datetimes(timezones=st.just(UTC)),
    gap_seconds=st.integers(0, 86400),
)
def test_gap_jitter_is_deterministic_and_under_a_quarter_of_the_gap(sender, last, gap_seconds):
    gap = timedelta(seconds=gap_seconds)
    j = rules.jitter(sender, last, gap)
    assert timedelta(0) <= j < gap / 4 or j == gap == timedelta(0)
    assert rules.jitter(sender, last, gap) == j
    # The same instant written in another zone is the same input.
    assert rules.jitter(sender, last.astimezone(BERLIN), gap) == j


def test_gap_jitter_varies_between_senders_and_sends():
    t = utc(2026, 11, 18, 10)
    gap = timedelta(minutes=10)
    values = {rules.jitter(s, t + timedelta(seconds=i), gap) for s in "abc" for i in range(10)}
    assert len(values) == 30


@given(attempt=st.integers(1, 12), key=st.uuids())
def test_backoff_doubles_from_five_minutes_with_under_a_quarter_of_jitter(attempt, key):
    base = timedelta(minutes=5) * 2 ** (attempt - 1)
    wait = rules.backoff(attempt, key)
    assert base <= wait < base * 1.25
    assert rules.backoff(attempt, key) == wait


def test_five_attempts_span_more_than_an_hour():
    total = sum((rules.backoff(a, "message") for a in range(1, 5)), timedelta(0))
    assert total >= timedelta(minutes=75)


def test_backoff_refuses_attempt_zero():
    with pytest.raises(ValueError, match="attempt numbers start at 1"):
        rules.backoff(0, "message")


def test_a_wait_resumes_after_its_duration_or_at_its_until_time_never_in_the_past():
    now = utc(2026, 11, 18, 10)
    assert rules.wait_resume(now, timedelta(days=3)) == utc(2026, 11, 21, 10)
    assert rules.wait_resume(now, until=utc(2026, 12, 10, 9)) == utc(2026, 12, 10, 9)
    assert rules.wait_resume(now, until=utc(2026, 11, 1)) == now
    assert rules.entering("wait", now, timedelta(hours=12)) == utc(2026, 11, 18, 22)
    assert rules.entering("email", now) == now
    assert rules.entering("condition", now) == now
    with pytest.raises(ValueError, match="needs a duration or an until-time"):
        rules.wait_resume(now)


def test_a_wait_across_a_dst_change_is_exact_elapsed_time():
    """3 days from Saturday 10:00 CET is Tuesday 11:00 CEST: 72 hours, like the engine's UTC SQL."""
    start = at(BERLIN, 2026, 3, 28, 10, 0)
    assert rules.wait_resume(start, timedelta(days=3)) - start == timedelta(hours=72)


def test_a_message_due_between_passes_goes_at_the_next_pass():
    origin = utc(2026, 11, 18, 9, 0)
    every = timedelta(minutes=5)
    assert rules.pass_at_or_after(utc(2026, 11, 18, 9, 2), origin, every) == utc(2026, 11, 18, 9, 5)
    assert rules.pass_at_or_after(utc(2026, 11, 18, 9, 5), origin, every) == utc(2026, 11, 18, 9, 5)
    assert rules.pass_at_or_after(utc(2026, 11, 18, 8, 0), origin, every) == origin
