"""The scheduling rules of the sequence engine, as pure functions: no database, no wall clock.

The engine (`engine/sending/scheduler.py`) applies them to a claimed batch and `forecast`
applies them in its simulation; because both call the same code, a forecast without engagement
is what the engine then sends. Every function takes the time it decides for; every datetime
is timezone-aware (a naive one is refused, never guessed).

What must hold (tests/engine/test_rules.py checks each):

* **Windows are local wall-clock time** on allowed ISO weekdays (1 = Monday .. 7 = Sunday), in
  the contact's time zone when it has a valid one, else the campaign's. An instant is in the
  window when its local time is in [start, end) and its local date's weekday is allowed; across
  a DST change this means the skipped hour never matches and a repeated hour matches twice.
  `next_open` returns the first such instant at or after `t`: nothing in between matches.
* **End of day.** Python's `time` stops at 23:59:59.999999 and PostgreSQL's `24:00` does not
  load through psycopg, so a window's `end` of `00:00` means *24:00*, the end of the day (an
  empty window would make no sense). `parse_window("00:00-24:00")` gives the all-day window
  `Window(00:00, 00:00)`; `format_window` prints `24:00` back. Windows that cross midnight
  (22:00-06:00) are refused: split the days instead.
* **Days.** A campaign's daily limit counts by the campaign time zone's local day; a sender's
  daily limit by the UTC day. Both count a message at the time its row is queued (the pass's
  `now`), whether or not it is delivered later.
* **Determinism.** The gap jitter and the retry jitter are derived from sha256 of their inputs,
  never from a random generator, so the engine and the forecast (and a rerun) agree.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import cache, lru_cache
from itertools import pairwise
from typing import Final
from zoneinfo import ZoneInfo, available_timezones

MIDNIGHT: Final = time(0)
#: `Window.end` of this value is the end of the day (24:00).
END_OF_DAY: Final = MIDNIGHT
ALL_DAYS: Final = frozenset(range(1, 8))
WEEKDAYS: Final = frozenset(range(1, 6))

# Why an enrollment's next run lies beyond what its step asked for (campaign_contacts.wait_reason,
# whose check constraint lists the same strings).
WINDOW: Final = "window"
SCHEDULED: Final = "scheduled"
CAMPAIGN_LIMIT: Final = "campaign limit"
SENDER_LIMIT: Final = "sender limit"
SENDER_GAP: Final = "sender gap"
SENDER_PAUSED: Final = "sender paused"
RETRY: Final = "retry"
SERVER_DOWN: Final = "server down"
WAIT_REASONS: Final = frozenset(
    {WINDOW, SCHEDULED, CAMPAIGN_LIMIT, SENDER_LIMIT, SENDER_GAP, SENDER_PAUSED, RETRY, SERVER_DOWN}
)
#: Exit reasons decided here.
CAMPAIGN_ENDED: Final = "campaign ended"
NO_SENDER: Final = "the campaign has no sender account"

STRATEGIES: Final = ("immediate", "scheduled", "optimized")

#: Retries: base · 2^(attempt-1) · (1 + jitter), jitter in [0, 0.25).
RETRY_BASE: Final = timedelta(minutes=5)
#: A server that is down (connection refused, timed out) defers its messages by this much,
#: without spending one of their attempts.
SERVER_DOWN_DELAY: Final = timedelta(minutes=15)
#: With every sender paused there is no time to wait for: look again this much later (resuming
#: a sender makes its enrollments due at once).
PAUSED_RECHECK: Final = timedelta(days=1)
#: An optimized send needs at least this many opens to have a usual open hour.
MIN_OPENS_FOR_HOUR: Final = 2


def _aware(t: datetime, what: str = "time") -> datetime:
    if t.tzinfo is None:
        raise ValueError(f"{what} {t.isoformat()} has no time zone; pass an aware datetime")
    return t


# --------------------------------------------------------------------------- windows


@dataclass(frozen=True)
class Window:
    """Local send hours [start, end) on ISO weekdays `days`; `end` 00:00 means 24:00."""

    start: time = time(9)
    end: time = time(17)
    days: frozenset[int] = WEEKDAYS

    def __post_init__(self) -> None:
        object.__setattr__(self, "days", frozenset(self.days))
        if not self.days:
            raise ValueError("a send window needs at least one day")
        if not self.days <= ALL_DAYS:
            bad = sorted(d for d in self.days if d not in ALL_DAYS)
            raise ValueError(f"send days are ISO weekdays 1 (Monday) to 7 (Sunday), got {bad}")
        for name, value in (("start", self.start), ("end", self.end)):
            if value.tzinfo is not None:
                raise ValueError(f"the window's {name} is local time, without a time zone")
        if self.end != END_OF_DAY and self.end <= self.start:
            raise ValueError(
                f"send window {format_window(self)} is empty or crosses midnight; "
                "use a window within one day (the end may be 24:00)"
            )

    @property
    def all_day(self) -> bool:
        return self.start == MIDNIGHT and self.end == END_OF_DAY

    def contains_time(self, local: time) -> bool:
        """Whether a local wall-clock time is in [start, end)."""
        return self.start <= local and (self.end == END_OF_DAY or local < self.end)


ALL_DAY: Final = Window(MIDNIGHT, END_OF_DAY, ALL_DAYS)

_DAY_NAMES: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def parse_window(text: str) -> tuple[time, time]:
    """`"09:00-17:00"` → (09:00, 17:00); `"24:00"` as the end is stored as 00:00 (end of day).

    Raises ValueError naming what is wrong; the campaign-file loader adds the file and key.
    """
    parts = text.strip().split("-") if isinstance(text, str) else []
    if len(parts) != 2:
        raise ValueError(f'send window {text!r} is not of the form "HH:MM-HH:MM"')
    start, end = (_parse_hhmm(p.strip(), text, allow_24=i == 1) for i, p in enumerate(parts))
    Window(start, end, ALL_DAYS)  # the same checks as any window
    return start, end


def _parse_hhmm(value: str, text: str, *, allow_24: bool) -> time:
    hh, sep, mm = value.partition(":")
    if not (sep and hh.isdigit() and mm.isdigit() and len(mm) == 2 and 1 <= len(hh) <= 2):
        raise ValueError(f'send window {text!r}: {value!r} is not a time "HH:MM"')
    hour, minute = int(hh), int(mm)
    if allow_24 and (hour, minute) == (24, 0):
        return END_OF_DAY
    if hour > 23 or minute > 59:
        raise ValueError(f"send window {text!r}: {value!r} is not a time of day")
    return time(hour, minute)


def format_window(window: Window) -> str:
    """The window as the campaign file writes it: `09:00-17:00`, `00:00-24:00`."""

    def hhmm(t: time) -> str:
        return t.strftime("%H:%M:%S" if t.second or t.microsecond else "%H:%M")

    end = "24:00" if window.end == END_OF_DAY else hhmm(window.end)
    return f"{hhmm(window.start)}-{end}"


def parse_days(names: Iterable[str]) -> frozenset[int]:
    """`["mon", "tue"]` (or full names) → {1, 2}; an unknown name raises ValueError naming it."""
    days = set()
    for name in names:
        number = _DAY_NUMBERS.get(str(name).strip().lower())
        if number is None:
            raise ValueError(f"unknown day {name!r}; use mon, tue, wed, thu, fri, sat, sun")
        days.add(number)
    return frozenset(days)


_DAY_NUMBERS: Final = {
    **{name: i + 1 for i, name in enumerate(_DAY_NAMES)},
    **{
        name: i + 1
        for i, name in enumerate(
            ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
        )
    },
}


def format_days(days: Iterable[int]) -> list[str]:
    return [_DAY_NAMES[d - 1] for d in sorted(days)]


def in_window(window: Window, tz: ZoneInfo, t: datetime) -> bool:
    """Whether `t`'s local time in `tz` is in the window on an allowed weekday."""
    local = _aware(t).astimezone(tz)
    return local.isoweekday() in window.days and window.contains_time(local.time())


def next_open(window: Window, tz: ZoneInfo, t: datetime) -> datetime:
    """`t` itself when it is in the window, else the first instant after it that is.

    DST-correct: a window opening in a skipped hour opens when the clocks jump (03:00 when
    02:30 does not exist); in a repeated hour it is open both times round.
    """
    _aware(t)
    if in_window(window, tz, t):
        return t
    day = t.astimezone(tz).date()
    # A week always has an allowed day; the rest covers a window that a DST change empties.
    for offset in range(0, 400):
        d = day + timedelta(days=offset)
        if d.isoweekday() not in window.days:
            continue
        for start, end in _open_intervals(window.start, window.end, tz, d):
            if end > t:
                return max(start, t.astimezone(UTC))
    raise AssertionError(f"window {format_window(window)} never opens in {tz.key}")


_SAMPLE: Final = timedelta(hours=3)


@lru_cache(maxsize=1 << 16)
def _open_intervals(
    start: time, end: time, tz: ZoneInfo, day: date
) -> tuple[tuple[datetime, datetime], ...]:
    """The UTC intervals whose local time in `tz` is on `day` within [start, end).

    Usually one; none when DST skips the whole window; two when the clocks go back through it.
    Between two offset changes wall time is UTC plus a constant, so each stretch of constant
    offset contributes one interval, cut exactly at the transitions.
    """
    wall_start = datetime.combine(day, start)
    wall_end = datetime.combine(day + timedelta(days=1) if end == END_OF_DAY else day, end)
    # UTC offsets stay within ±26 h, so every matching instant lies in [lo, hi].
    lo = (wall_start - timedelta(hours=27)).replace(tzinfo=UTC, microsecond=0)
    hi = (wall_end + timedelta(hours=27)).replace(tzinfo=UTC, microsecond=0)
    cuts = [lo, *_transitions(tz, lo, hi), hi]
    intervals: list[tuple[datetime, datetime]] = []
    for a, b in pairwise(cuts):
        offset = a.astimezone(tz).utcoffset()
        assert offset is not None
        s = max(a, (wall_start - offset).replace(tzinfo=UTC))
        e = min(b, (wall_end - offset).replace(tzinfo=UTC))
        if s < e:
            if intervals and intervals[-1][1] == s:
                s = intervals.pop()[0]
            intervals.append((s, e))
    return tuple(intervals)


def _transitions(tz: ZoneInfo, lo: datetime, hi: datetime) -> list[datetime]:
    """The instants in (lo, hi] where `tz`'s UTC offset changes (to the second).

    Offsets are sampled every three hours (no zone changes twice within that) and each change
    is bisected; tz data has whole-second transitions.
    """
    found = []
    a = lo
    while a < hi:
        b = min(a + _SAMPLE, hi)
        if _offset(tz, a) != _offset(tz, b):
            low, high = int(a.timestamp()), int(b.timestamp())  # offset(low) old, offset(high) new
            new = _offset(tz, b)
            while high - low > 1:
                mid = (low + high) // 2
                if _offset(tz, datetime.fromtimestamp(mid, UTC)) == new:
                    high = mid
                else:
                    low = mid
            found.append(datetime.fromtimestamp(high, UTC))
        a = b
    return found


def _offset(tz: ZoneInfo, t: datetime) -> timedelta | None:
    return t.astimezone(tz).utcoffset()


# --------------------------------------------------------------------------- days


def local_day(t: datetime, tz: ZoneInfo) -> date:
    """The date of `t` on the wall clocks of `tz` (a campaign's day)."""
    return _aware(t).astimezone(tz).date()


def day_bounds(day: date, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """The UTC instants [first, end) of local date `day` in `tz` (23, 24 or 25 hours long)."""
    intervals = _open_intervals(MIDNIGHT, END_OF_DAY, tz, day)
    return intervals[0][0], intervals[-1][1]


def next_day_start(t: datetime, tz: ZoneInfo) -> datetime:
    """The first instant of the local day after `t`'s in `tz`."""
    return day_bounds(local_day(t, tz), tz)[1]


def utc_day(t: datetime) -> date:
    """A sender's day."""
    if t.tzinfo is UTC:
        return t.date()
    return _aware(t).astimezone(UTC).date()


def next_utc_midnight(t: datetime) -> datetime:
    return datetime.combine(utc_day(t) + timedelta(days=1), MIDNIGHT, UTC)


# --------------------------------------------------------------------------- time zones


@cache
def _known_zones() -> frozenset[str]:
    # `localtime` is this machine's setting, not an IANA name.
    return frozenset(available_timezones() - {"localtime"})


@lru_cache(maxsize=4096)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def timezone_named(name: str | None) -> ZoneInfo | None:
    """The zone of a valid IANA name (surrounding blanks ignored), else None."""
    if not isinstance(name, str):
        return None
    name = name.strip()
    if name not in _known_zones():
        return None
    return _zone(name)


def campaign_timezone(name: str | None) -> ZoneInfo:
    """The campaign's time zone when `name` is a valid IANA name, else UTC (as the engine sends
    and forecasts it)."""
    return timezone_named(name) or _zone("UTC")


def contact_timezone(name: str | None, campaign_tz: ZoneInfo) -> ZoneInfo:
    """The contact's time zone when `name` is a valid IANA name, else the campaign's.

    Contacts come from CSV uploads, so empty, misspelt (`Europe/Berln`) or hostile values
    (`../../etc/passwd`) all fall back to the campaign's zone instead of failing the item.
    """
    return timezone_named(name) or campaign_tz


# --------------------------------------------------------------------------- strategies


def usual_open_hour(opens: Iterable[datetime], tz: ZoneInfo) -> int | None:
    """The contact's usual open hour: the most frequent local hour (in `tz`) of its opens.

    None with fewer than two opens. Ties go to the earliest hour of the day.
    """
    hours = Counter(_aware(t, "open time").astimezone(tz).hour for t in opens)
    if sum(hours.values()) < MIN_OPENS_FOR_HOUR:
        return None
    best = max(hours.values())
    return min(h for h, n in hours.items() if n == best)


def optimized_window(window: Window, open_hour: int | None) -> Window:
    """The hour an optimized send goes in: [H:00, H:00+1h) ∩ window, H the usual open hour.

    When the contact has no usual open hour, or that hour does not overlap the window, it is
    the window's first hour: [start, start+1h) ∩ window. Days are the window's.
    """

    def hour_window(h_start: time) -> Window | None:
        begin = datetime.combine(date.min, h_start)
        h_end = (begin + timedelta(hours=1)).time()  # 23:xx + 1h → 00:xx, i.e. capped at 24:00
        starts_next_day = (begin + timedelta(hours=1)).date() > date.min
        end = END_OF_DAY if starts_next_day else h_end
        lo = max(window.start, h_start)
        ends = [e for e in (window.end, end) if e != END_OF_DAY]
        hi = min(ends) if ends else END_OF_DAY
        if hi != END_OF_DAY and hi <= lo:
            return None
        return Window(lo, hi, window.days)

    if open_hour is not None:
        chosen = hour_window(time(open_hour))
        if chosen is not None:
            return chosen
    first = hour_window(window.start)
    assert first is not None  # the window's own first hour always overlaps it
    return first


@dataclass(frozen=True)
class Schedule:
    """When a campaign may send: its time zone, window and days, strategy, start and end.

    `tz` is the campaign's zone (its local day counts its daily limit); the window is applied
    in each contact's zone (`contact_timezone`).
    """

    tz: ZoneInfo = ZoneInfo("UTC")
    window: Window = Window()
    strategy: str = "immediate"
    start_at: datetime | None = None
    end_at: datetime | None = None
    daily_limit: int = 500

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            choices = ", ".join(STRATEGIES)
            raise ValueError(f"unknown send strategy {self.strategy!r}; use {choices}")
        if self.daily_limit < 1:
            raise ValueError("a campaign's daily limit must be at least 1")
        for name in ("start_at", "end_at"):
            value = getattr(self, name)
            if value is not None:
                _aware(value, name)
        if self.start_at and self.end_at and self.end_at <= self.start_at:
            raise ValueError("a campaign's end_at must be after its start_at")

    def ended(self, t: datetime) -> bool:
        """Nothing goes out at or after end_at: enrollments still waiting exit then."""
        return self.end_at is not None and t >= self.end_at

    def window_for(self, open_hour: int | None) -> Window:
        if self.strategy == "optimized":
            return optimized_window(self.window, open_hour)
        return self.window


def earliest_send(
    schedule: Schedule, tz: ZoneInfo, t: datetime, open_hour: int | None = None
) -> tuple[datetime, str | None]:
    """The first instant at or after `t` a message to a contact in `tz` may go, ignoring
    limits, with the reason it is later than `t`: `scheduled` (before start_at) or `window`.

    It may lie at or after `end_at`: the enrollment then exits at end_at (`Schedule.ended`).
    """
    reason = None
    if schedule.strategy == "scheduled" and schedule.start_at and t < schedule.start_at:
        t, reason = schedule.start_at, SCHEDULED
    at = next_open(schedule.window_for(open_hour), tz, t)
    if at > t and reason is None:
        reason = WINDOW
    return at, reason


# --------------------------------------------------------------------------- jitter and waits


def _fraction(*parts: object) -> int:
    """A deterministic 64-bit number from `parts` (sha256), as the numerator over 2**64."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _micros(t: datetime) -> int:
    """`t` as integer microseconds since the epoch: the same for any zone `t` is expressed in."""
    return (_aware(t) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


@lru_cache(maxsize=1 << 14)
def jitter(sender_id: Hashable, last: datetime, gap: timedelta) -> timedelta:
    """The extra wait after a sender's minimum gap: in [0, gap/4), from sha256(sender, last)."""
    gap_us = gap // timedelta(microseconds=1)
    return timedelta(microseconds=gap_us * _fraction(sender_id, _micros(last)) // (4 << 64))


def backoff(attempt: int, key: Hashable) -> timedelta:
    """The wait before retry number `attempt` (1 = after the first failure) of message `key`.

    base · 2^(attempt-1) · (1 + j), base 5 minutes, j in [0, 0.25) from sha256(key, attempt):
    5 attempts span more than an hour and a quarter, so a short outage does not fail a message.
    """
    if attempt < 1:
        raise ValueError(f"attempt numbers start at 1, got {attempt}")
    delay_us = (RETRY_BASE // timedelta(microseconds=1)) << (attempt - 1)
    return timedelta(microseconds=delay_us + delay_us * _fraction(key, attempt) // (4 << 64))


def wait_resume(
    now: datetime, duration: timedelta | None = None, until: datetime | None = None
) -> datetime:
    """When an enrollment entering a wait step at `now` has finished waiting.

    A duration counts from entering (`now + d`, exact elapsed time); an until-time is never in
    the past (`max(now, until)`). A step with both uses the duration, like the engine's SQL
    (`coalesce(now + wait_duration, greatest(now, wait_until))`); one with neither is refused.
    """
    _aware(now)
    if duration is not None:
        if duration < timedelta(0):
            raise ValueError(f"a wait cannot be negative ({duration})")
        return now + duration
    if until is not None:
        return max(now, _aware(until, "wait until"))
    raise ValueError("a wait step needs a duration or an until-time")


def entering(
    kind: str, now: datetime, duration: timedelta | None = None, until: datetime | None = None
) -> datetime:
    """next_run_at of an enrollment entering a step of `kind` at `now` (the issue's rule)."""
    return wait_resume(now, duration, until) if kind == "wait" else now


# --------------------------------------------------------------------------- throttles


@dataclass
class SenderState:
    """A sender account's throttle state, shared by every campaign that uses it.

    `sent` counts its messages (every campaign's) on UTC day `day`; `last` is the queued_at of
    its latest message. The engine loads both from sent_emails; `allocate` updates them.
    """

    id: Hashable
    daily_limit: int
    min_gap: timedelta = timedelta(0)
    paused: bool = False
    day: date | None = None
    sent: int = 0
    last: datetime | None = None

    def sent_on(self, day: date) -> int:
        return self.sent if day == self.day else 0

    def at_limit(self, now: datetime) -> bool:
        return self.sent_on(utc_day(now)) >= self.daily_limit

    def free_at(self) -> datetime | None:
        """When the minimum gap since its last message has passed (None: free now)."""
        if self.last is None:
            return None
        return self.last + self.min_gap + jitter(self.id, self.last, self.min_gap)

    def available_at(self, now: datetime) -> datetime:
        """The first time at or after `now` it may send, limit and gap both considered."""
        at = max(now, self.free_at() or now)
        if self.at_limit(now):
            at = max(at, next_utc_midnight(now))
        return at

    def record(self, now: datetime) -> None:
        day = utc_day(now)
        if day != self.day:
            self.day, self.sent = day, 0
        self.sent += 1
        self.last = now


@dataclass
class CampaignState:
    """A campaign's throttle state: its schedule, rotation and messages of its local day."""

    id: Hashable
    schedule: Schedule
    #: Its sender accounts in rotation order (position 1..n).
    senders: tuple[Hashable, ...] = ()
    day: date | None = None
    sent: int = 0

    def sent_on(self, day: date) -> int:
        return self.sent if day == self.day else 0

    def at_limit(self, now: datetime) -> bool:
        return self.sent_on(local_day(now, self.schedule.tz)) >= self.schedule.daily_limit

    def record(self, now: datetime) -> None:
        day = local_day(now, self.schedule.tz)
        if day != self.day:
            self.day, self.sent = day, 0
        self.sent += 1


@dataclass(frozen=True)
class Item:
    """One due email of a claimed batch, as far as the rules are concerned."""

    campaign_id: Hashable
    #: The contact's resolved zone (`contact_timezone`).
    tz: ZoneInfo
    #: The email step's own sender account, which overrides the rotation.
    step_sender: Hashable | None = None
    #: The contact's usual open hour (`usual_open_hour`), for optimized campaigns.
    open_hour: int | None = None


@dataclass(frozen=True)
class Send:
    """Send now from this sender account (its and the campaign's counts are taken)."""

    sender_id: Hashable


@dataclass(frozen=True)
class Defer:
    """Not now: set next_run_at = `until` and wait_reason = `reason`.

    `until` already honours the window, so a pass never reads the enrollment earlier than it
    can go.
    """

    reason: str
    until: datetime


@dataclass(frozen=True)
class Exit:
    """The enrollment ends with this reason (`campaign ended`, no sender account)."""

    reason: str


Decision = Send | Defer | Exit


def decide(
    item: Item,
    campaign: CampaignState,
    senders: Mapping[Hashable, SenderState],
    now: datetime,
) -> Decision:
    """What happens to one due email at `now`; a Send takes its counts at once.

    In this order: the campaign's end (exit), the schedule and window in the contact's zone
    (`scheduled` / `window`), the campaign's daily limit (`campaign limit`, until the next
    local day), then the sender rotation: among the step's sender (if set) else the campaign's,
    the available ones (not paused, under their UTC-day limit, past their gap) are ranked least
    recently used first (never used first); senders last used at the same instant (one pass)
    go by fewer messages today, then by rotation position, so a batch with no gap still rotates.
    None available: `sender paused` when every one is paused (looked at again a day later, or
    when a sender resumes), else `sender limit` when every unpaused one is at its limit, else
    `sender gap`; `until` is when the first of them is available again.
    Every deferral's `until` is moved on into the contact's window.
    """
    held = blocked(item, campaign, senders, now)
    if held is not None:
        return held
    today = utc_day(now)
    _, chosen = min(
        _ready(item, campaign, senders, now),
        key=lambda ps: (ps[1].last is not None, ps[1].last or now, ps[1].sent_on(today), ps[0]),
    )
    chosen.record(now)
    campaign.record(now)
    return Send(chosen.id)


def blocked(
    item: Item,
    campaign: CampaignState,
    senders: Mapping[Hashable, SenderState],
    now: datetime,
) -> Defer | Exit | None:
    """`decide`'s answer when `item` cannot go at `now`, else None; changes no state.

    Within one pass (one `now`) an answer that is not None stays the same for every item of the
    same campaign, zone, open hour and candidate senders as long as no message is sent: the
    forecast moves such items in bulk.
    """
    schedule = campaign.schedule
    if schedule.ended(now):
        return Exit(CAMPAIGN_ENDED)
    at, reason = earliest_send(schedule, item.tz, now, item.open_hour)
    if reason is not None:
        return Defer(reason, at)

    def deferred(reason: str, until: datetime) -> Defer:
        return Defer(reason, earliest_send(schedule, item.tz, until, item.open_hour)[0])

    if campaign.at_limit(now):
        return deferred(CAMPAIGN_LIMIT, next_day_start(now, schedule.tz))
    candidates = _candidates(item, campaign, senders)
    if not candidates:
        return Exit(NO_SENDER)
    active = [(pos, s) for pos, s in candidates if not s.paused]
    if not active:
        return deferred(SENDER_PAUSED, now + PAUSED_RECHECK)
    if _ready(item, campaign, senders, now):
        return None
    reason = SENDER_LIMIT if all(s.at_limit(now) for _, s in active) else SENDER_GAP
    return deferred(reason, min(s.available_at(now) for _, s in active))


def _candidates(
    item: Item, campaign: CampaignState, senders: Mapping[Hashable, SenderState]
) -> list[tuple[int, SenderState]]:
    ids = (item.step_sender,) if item.step_sender is not None else campaign.senders
    return [(pos, senders[i]) for pos, i in enumerate(ids) if i in senders]


def _ready(
    item: Item, campaign: CampaignState, senders: Mapping[Hashable, SenderState], now: datetime
) -> list[tuple[int, SenderState]]:
    return [
        (pos, s)
        for pos, s in _candidates(item, campaign, senders)
        if not s.paused and s.available_at(now) <= now
    ]


def allocate(
    items: Sequence[Item],
    campaigns: Mapping[Hashable, CampaignState],
    senders: Mapping[Hashable, SenderState],
    now: datetime,
) -> list[Decision]:
    """`decide` for each item of a claimed batch, in the batch's order (the engine claims by
    next_run_at, then contact id; the forecast processes in the same order).

    The states are updated as messages are allocated, so a batch never takes more than a limit
    allows and the rotation moves on within the batch.
    """
    return [decide(item, campaigns[item.campaign_id], senders, now) for item in items]


def pass_at_or_after(t: datetime, origin: datetime, every: timedelta) -> datetime:
    """The first engine pass at or after `t`, passes running at origin + k·every (k >= 0)."""
    if every <= timedelta(0):
        raise ValueError("the pass interval must be positive")
    if t <= origin:
        return origin
    k = -((origin - t) // every)  # ceil((t - origin) / every)
    return origin + k * every
