"""The forecast: how many messages each step of a campaign sends per day, simulated with the
engine's own scheduling rules (`engine.sequence.rules`) and condition semantics
(`engine.sequence.conditions`), assuming no engagement from now on.

`forecast(conn, campaign_id, now)` loads the campaign, its senders' usage, its enrollments and
the list members a pass would still enroll; `simulate(...)` (pure, no database) plays the
engine's passes forward. A simulated run of the engine without engagement must send exactly
what the forecast says; these are the assumptions both sides share:

* **Passes** run at `now + k·pass_every` (k = 0, 1, ...). Something due between passes goes at
  the next one: due at 09:02 with 5-minute passes from 09:00, it goes at 09:05. Passes where
  nothing is due are skipped, not evaluated.
* **A pass**, at its time T: a scheduled campaign whose start_at <= T becomes active; list
  members not yet enrolled enroll (entering the first step); due wait, condition and action
  steps move on until each enrollment stands on an email step, a future wait, or the end; then
  the due emails, in (next_run_at, contact id) order and in batches of `batch_size` (an email
  step reached by a send in this pass waits for a later batch of the same pass), each decided
  by `rules.decide`: sent, deferred to its `until` (next_run_at), or exited.
* **Entering a step** at T: a wait with a duration is due at T + d, with an until-time at
  max(T, until), any other step at T (`rules.entering`).
* **A message counts** at T, the pass that queues it: against the campaign's daily limit on T's
  local day in the campaign's time zone, against its sender's on T's UTC day, and in this
  forecast on T's campaign-local day.
* **No engagement from now on**: no opens, clicks, replies or bounces and no sending failures;
  conditions see only the events already recorded. Actions change the simulated contact
  (tags, fields), which later conditions and windows see.
* **Senders** start with their usage today (every campaign's messages) and their last message;
  from then on only this campaign is assumed to use them.
* A campaign that is a draft is forecast as if launched now, a paused one as if resumed now.
* A queued message that is being retried keeps its sender and counts, so only its schedule
  applies (as in the engine); a message left `sent`, `sending` or `unknown` moves on without a
  new one; `failed` or `bounced` ends the enrollment.
"""

from __future__ import annotations

import bisect
import heapq
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from itertools import chain
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from sqlalchemy.engine import Connection

from engine.sending.store import COUNTS_AGAINST_LIMITS, campaign_sends_today
from engine.sequence import conditions, rules
from engine.sequence.rules import CampaignState, Defer, Exit, Item, Schedule, Send, SenderState
from engine.sequence.steps import COMPANY_STOPPING
from engine.tenants import current_tenant_name, penguin_command
from engine.text import shown

PASS_EVERY = timedelta(minutes=5)
#: The simulation goes on past the table's days to find the last message, up to this far.
HORIZON = timedelta(days=366)
#: The engine's claim batch (`scheduler.Config.batch_size`).
BATCH_SIZE = 500

STEP_KINDS = ("email", "wait", "condition", "action")
#: Message rows standing on the current step: what a pass does with them.
_RETRY = "queued"
_MOVES_ON = ("sent", "sending", "unknown")
_ENDS = ("failed", "bounced")


class ForecastError(ValueError):
    """A campaign that cannot be forecast (unknown, or a definition the engine could not run)."""


@dataclass(frozen=True)
class SimStep:
    """A live step as the engine runs it; links are step keys (None: the end)."""

    key: str
    kind: str
    next: str | None = None
    true_next: str | None = None
    false_next: str | None = None
    wait_duration: timedelta | None = None
    wait_until: datetime | None = None
    condition: Any = None
    action: Any = None
    #: An email step's own sender account (overrides the rotation).
    sender: Hashable | None = None

    def __post_init__(self) -> None:
        if self.kind not in STEP_KINDS:
            raise ForecastError(f"step {shown(self.key)}: unknown step type {shown(self.kind)!r}")


@dataclass(frozen=True)
class SimCampaign:
    id: Hashable
    name: str
    #: draft | scheduled | active | paused | completed
    status: str
    schedule: Schedule
    #: Live steps in their order; enrollments start at the first.
    steps: Mapping[str, SimStep]
    #: Sender accounts in rotation order.
    senders: tuple[Hashable, ...] = ()
    #: Messages of the campaign already queued on its local day of `now`.
    sent_today: int = 0


@dataclass
class SimEnrollment:
    """An enrollment (or, with `step` None, a list member a pass would enroll)."""

    contact_id: Hashable
    #: The contact's columns (`attributes` a dict, `tags` a list), as conditions read them.
    contact: dict[str, Any] = field(default_factory=dict)
    step: str | None = None
    due: datetime | None = None
    #: Engagement already recorded: (event_type, step key or None).
    events: frozenset[tuple[str, str | None]] = frozenset()
    #: Times of the contact's opens (any campaign), for an optimized campaign's open hour.
    opens: tuple[datetime, ...] = ()
    #: Status of the message row of the current step, if one exists.
    message: str | None = None


@dataclass(frozen=True)
class Forecast:
    """Messages per campaign-local day and email step, and when the last one goes out."""

    campaign: str
    timezone: str
    now: datetime
    days: tuple[date, ...]
    #: The email steps, in step order.
    steps: tuple[str, ...]
    counts: Mapping[tuple[date, str], int]
    #: The local day of the last message (beyond the table's days too, up to a year ahead);
    #: None when nothing goes out.
    last_day: date | None
    #: Messages after the table's last day (found while looking for the last one).
    later: int = 0
    #: Enrollments still under way when the simulation stopped (a year ahead, or end_at).
    unfinished: int = 0
    notes: tuple[str, ...] = ()

    def sent(self, day: date, step: str | None = None) -> int:
        if step is not None:
            return self.counts.get((day, step), 0)
        return sum(self.counts.get((day, s), 0) for s in self.steps)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_rows(self) -> list[dict[str, Any]]:
        """One row per local day: `day`, one count per email step key, `total`."""
        return [
            {"day": d, **{s: self.counts.get((d, s), 0) for s in self.steps}, "total": self.sent(d)}
            for d in self.days
        ]

    def summary(self) -> str:
        if self.last_day is None:
            return "Nothing goes out" + (
                f" within a year ({self.unfinished} enrollments wait)." if self.unfinished else "."
            )
        text = f"Last message: {_day_label(self.last_day)}"
        if self.later:
            text += f" ({self.later} messages after {_day_label(self.days[-1])})"
        if self.unfinished:
            text += f"; {self.unfinished} enrollments still under way a year from now"
        return text + "."

    def table(self) -> Table:
        """A rich table: a row per day, a column per email step, and the day's total.

        Names come from campaign files: they are shown as plain text (`shown`), never markup.
        """
        first = _day_label(self.days[0])
        table = Table(
            title=Text(f"Forecast of {shown(self.campaign)} ({self.timezone}), from {first}"),
            caption=Text(self.summary()),
            caption_justify="left",
        )
        table.add_column("day", no_wrap=True)
        for key in self.steps:
            table.add_column(Text(shown(key, 40)), justify="right")
        table.add_column("total", justify="right", style="bold")
        for row in self.as_rows():
            cells = [_count_cell(row[s]) for s in self.steps]
            table.add_row(_day_label(row["day"]), *cells, _count_cell(row["total"]))
        table.add_section()
        table.add_row(
            "total",
            *[_count_cell(sum(self.counts.get((d, s), 0) for d in self.days)) for s in self.steps],
            _count_cell(sum(self.sent(d) for d in self.days)),
        )
        return table


def _day_label(day: date) -> str:
    return day.strftime("%a %Y-%m-%d")


def _count_cell(n: int) -> Text:
    return Text(str(n), style="dim" if n == 0 else "")


def render_forecast(forecast: Forecast) -> RenderableType:
    """What `penguin campaign forecast` prints: the table, then the notes."""
    return Group(forecast.table(), *(Text(f"• {shown(note, 300)}") for note in forecast.notes))


# --------------------------------------------------------------------------- simulation


@dataclass(frozen=True)
class _Class:
    """What decides an email the same way for every enrollment: step, zone, open hour and the
    message row the step already has (a retry, or one left behind by a stopped worker)."""

    step: str
    tz: ZoneInfo | None = None
    open_hour: int | None = None
    message: str | None = None


@dataclass
class _Bucket:
    due: datetime
    cls: int
    items: list[tuple[Any, int]]  # (order, enrollment index), sorted when taken
    pos: int = 0
    done: bool = False


def simulate(
    campaign: SimCampaign,
    enrollments: Sequence[SimEnrollment],
    senders: Mapping[Hashable, SenderState],
    now: datetime,
    *,
    days: int = 30,
    pass_every: timedelta = PASS_EVERY,
    batch_size: int = BATCH_SIZE,
    horizon: timedelta = HORIZON,
    on_send: OnSend | None = None,
) -> Forecast:
    """Play the engine's passes from `now` (see the module's assumptions) and count the
    messages per campaign-local day and step. Nothing passed in is changed.

    `on_send(t, contact_id, step_key, sender_id)` hears of every simulated message (sender None
    for a retry, which keeps the sender it has): a test can compare the engine's run message by
    message.
    """
    if days < 1:
        raise ForecastError("a forecast covers at least one day")
    if pass_every <= timedelta(0) or batch_size < 1:
        raise ForecastError("the pass interval and the batch size must be positive")
    if now.tzinfo is None:
        raise ForecastError("now needs a time zone")
    simulation = _Simulation(campaign, enrollments, senders, now, days, pass_every, batch_size)
    simulation.on_send = on_send
    return simulation.run(horizon)


OnSend = Callable[[datetime, Hashable, str, Hashable | None], None]


class _Simulation:
    """The state of one simulation. Enrollments wait in buckets of one due time and one
    `_Class`, so a pass that defers thousands of them alike (a sender's gap, the campaign's
    limit, a closed window) moves whole buckets instead of deciding each one."""

    def __init__(
        self,
        campaign: SimCampaign,
        enrollments: Sequence[SimEnrollment],
        senders: Mapping[Hashable, SenderState],
        now: datetime,
        days: int,
        pass_every: timedelta,
        batch_size: int,
    ):
        self.campaign = campaign
        self.schedule = campaign.schedule
        self.steps = campaign.steps
        if not self.steps:
            raise ForecastError(f"campaign {shown(campaign.name)} has no steps")
        for step in self.steps.values():
            for target in (step.next, step.true_next, step.false_next):
                if target is not None and target not in self.steps:
                    raise ForecastError(
                        f"step {shown(step.key)}: goes to a missing step {shown(target)!r}"
                    )
        self.first = next(iter(self.steps))
        self.now, self.pass_every, self.batch_size = now, pass_every, batch_size
        tz = self.schedule.tz
        first_day = rules.local_day(now, tz)
        self.days = tuple(first_day + timedelta(days=i) for i in range(days))
        self.table_end = rules.day_bounds(self.days[-1], tz)[1]
        self.state = CampaignState(
            campaign.id, self.schedule, campaign.senders, first_day, campaign.sent_today
        )
        self.senders = {k: replace(s) for k, s in senders.items()}
        self.people = [replace(e, contact=_copy_contact(e.contact)) for e in enrollments]
        self.orders = [_order(e.contact_id) for e in self.people]
        self.classes: list[_Class] = []
        self.class_ids: dict[_Class, int] = {}
        self.items: dict[int, Item] = {}
        #: (due, class) → runs of (order, enrollment index), each run sorted from its start.
        self.buckets: dict[tuple[datetime, int], list[tuple[list[tuple[Any, int]], int]]] = {}
        self.heap: list[tuple[datetime, int]] = []
        self.counts: Counter[tuple[date, str]] = Counter()
        self.later = 0
        self.last_day: date | None = None
        self.notes: list[str] = []
        self.members: list[int] = []
        self.on_send: OnSend | None = None
        self.memo: dict[tuple[int, datetime], Defer | Exit | None] = {}

        status = campaign.status
        self.active_from: datetime | None = now
        start_at = self.schedule.start_at
        if status == "completed":
            self.active_from = None
            self.notes.append("The campaign has completed: nothing is left to send.")
        elif status == "scheduled" or (status == "draft" and start_at and start_at > now):
            self.active_from = max(now, start_at) if start_at else now
            if start_at and start_at > now:
                self.notes.append(f"The campaign starts at {_when(start_at, tz)}.")
        if status == "draft":
            self.notes.append("The campaign is a draft: forecast as if launched now.")
        elif status == "paused":
            self.notes.append("The campaign is paused: forecast as if resumed now.")

        for index, person in enumerate(self.people):
            if person.step is None:
                self.members.append(index)
            elif person.step not in self.steps:
                raise ForecastError(
                    f"an enrollment stands on step {person.step!r}, which the campaign no "
                    "longer has"
                )
            elif person.due is not None:
                self._place(index, person.step, person.due)
        self.members.sort(key=lambda i: self.orders[i])

    # -- the pass loop

    def run(self, horizon: timedelta) -> Forecast:
        stop = self.now + horizon
        if self.schedule.end_at is not None:
            stop = min(stop, self.schedule.end_at)
        t = self.now
        while t < stop and self.active_from is not None:
            self._pass(t)
            nxt = self._next_due()
            if nxt is None:
                break
            t = rules.pass_at_or_after(max(nxt, t + self.pass_every), self.now, self.pass_every)
        unfinished = sum(len(r) - start for runs in self.buckets.values() for r, start in runs)
        if self.active_from is not None and self.active_from > self.now and self.members:
            unfinished += len(self.members)
        if self.schedule.end_at is not None and unfinished and t >= self.schedule.end_at:
            self.notes.append(
                f"{unfinished} enrollments are still under way when the campaign ends at "
                f"{_when(self.schedule.end_at, self.schedule.tz)}; they exit then."
            )
            unfinished = 0
        self.notes.append(
            "Assumes no replies, opens, clicks, bounces or sending failures from now on, and "
            "no other campaign using its senders."
        )
        return Forecast(
            campaign=self.campaign.name,
            timezone=self.schedule.tz.key,
            now=self.now,
            days=self.days,
            steps=tuple(k for k, s in self.steps.items() if s.kind == "email"),
            counts=dict(self.counts),
            last_day=self.last_day,
            later=self.later,
            unfinished=unfinished,
            notes=tuple(self.notes),
        )

    def _next_due(self) -> datetime | None:
        due = self.heap[0][0] if self.heap else None
        if self.members and self.active_from is not None:
            due = self.active_from if due is None else min(due, self.active_from)
        return due

    def _pass(self, t: datetime) -> None:
        assert self.active_from is not None
        self.memo.clear()
        if t < self.active_from:
            return
        if self.members:
            first = self.steps[self.first]
            due = rules.entering(first.kind, t, first.wait_duration, first.wait_until)
            for index in self.members:
                self.people[index].step = self.first
                self._place(index, self.first, due)
            self.members = []
        emails: list[_Bucket] = []
        for bucket in self._take_due(t):
            if self.steps[self.classes[bucket.cls].step].kind == "email":
                emails.append(bucket)
            else:
                for _, index in bucket.items[bucket.pos :]:
                    self._advance(index, t)
        emails += self._take_due(t)  # reached by this pass's advances
        self._send(t, emails)

    def _take_due(self, t: datetime) -> list[_Bucket]:
        taken = []
        while self.heap and self.heap[0][0] <= t:
            due, cls = heapq.heappop(self.heap)
            runs = self.buckets.pop((due, cls))
            if len(runs) == 1:  # a bucket moved as one: no copy
                items, start = runs[0]
                taken.append(_Bucket(due, cls, items, start))
            else:
                merged = sorted(chain.from_iterable(r[start:] if start else r for r, start in runs))
                taken.append(_Bucket(due, cls, merged))
        return taken

    # -- where enrollments wait

    def _class_of(self, index: int, step_key: str) -> int:
        step = self.steps[step_key]
        person = self.people[index]
        if step.kind == "email":
            tz = rules.contact_timezone(person.contact.get("timezone"), self.schedule.tz)
            hour = (
                rules.usual_open_hour(person.opens, tz)
                if self.schedule.strategy == "optimized"
                else None
            )
            cls = _Class(step_key, tz, hour, person.message)
        else:
            cls = _Class(step_key)
        found = self.class_ids.get(cls)
        if found is None:
            found = self.class_ids[cls] = len(self.classes)
            self.classes.append(cls)
            if step.kind == "email":
                self.items[found] = Item(self.campaign.id, cls.tz, step.sender, cls.open_hour)
        return found

    def _place(self, index: int, step_key: str, due: datetime, cls: int | None = None) -> None:
        person = self.people[index]
        person.step, person.due = step_key, due
        if cls is None:
            cls = self._class_of(index, step_key)
        self._put(due, cls, [(self.orders[index], index)])

    def _put(self, due: datetime, cls: int, items: list[tuple[Any, int]], start: int = 0) -> None:
        """Add `items[start:]` (sorted, never changed afterwards) to the bucket (due, cls)."""
        key = (due, cls)
        runs = self.buckets.get(key)
        if runs is None:
            self.buckets[key] = [(items, start)]
            heapq.heappush(self.heap, key)
        else:
            runs.append((items, start))

    # -- wait, condition and action steps

    def _advance(self, index: int, t: datetime) -> None:
        """Move a due enrollment through wait, condition and action steps, as the engine's
        set-based rounds do, until it stands on an email step, a future wait, or the end."""
        person = self.people[index]
        assert person.step is not None
        step = self.steps[person.step]
        for _ in range(len(self.steps) + 1):
            if step.kind == "email":
                self._place(index, step.key, t)
                return
            if step.kind == "wait":
                target = step.next
            elif step.kind == "condition":
                try:
                    ok = conditions.evaluate(step.condition, person.contact, set(person.events))
                except ValueError as exc:
                    raise ForecastError(f"step {shown(step.key)}: {exc}") from exc
                target = step.true_next if ok else step.false_next
            else:
                try:
                    action = conditions.parse_action(step.action)
                except ValueError as exc:
                    raise ForecastError(f"step {shown(step.key)}: {exc}") from exc
                if action.kind == "exit":
                    return
                _apply(action, person.contact)
                target = step.next
            person.message = None
            if target is None:
                return  # completed
            step = self.steps[target]
            due = rules.entering(step.kind, t, step.wait_duration, step.wait_until)
            if due > t:
                self._place(index, step.key, due)
                return
        raise ForecastError(f"step {shown(step.key)}: the sequence loops without waiting")

    # -- email steps

    def _send(self, t: datetime, buckets: list[_Bucket]) -> None:
        """The email stage of a pass: decide every due email in (due, contact) order.

        The engine claims `batch_size` due emails at a time in that order, whatever then
        happens to each, and an email step reached by a send is claimed by a later batch. So
        the emails moved in bulk here (a closed window, the campaign's limit) fill batches too:
        they count where they stand in the order, and held emails join when a batch is full
        or the due ones run out, as in the engine.
        """
        if not buckets:
            return
        day = rules.local_day(t, self.schedule.tz)
        live: list[_Bucket] = []
        settled: list[tuple[datetime, list[tuple[Any, int]], int]] = []
        for bucket in buckets:
            start = bucket.pos
            if not self._settle_in_bulk(bucket, t, only_final=True):
                live.append(bucket)
            elif start < len(bucket.items):
                settled.append((bucket.due, bucket.items, start))
        heap = [(b.due, b.items[b.pos][0], i) for i, b in enumerate(live)]
        heapq.heapify(heap)
        held: list[int] = []
        if self._all_blocked(live, held, t):
            return

        def join_held() -> None:
            # The next claim of this pass sees the email steps reached by its sends.
            by_class: dict[int, list[tuple[Any, int]]] = defaultdict(list)
            for index in held:
                by_class[self._class_of(index, self.people[index].step or "")].append(
                    (self.orders[index], index)
                )
            held.clear()
            for cls, items in by_class.items():
                items.sort()
                live.append(_Bucket(t, cls, items))
                heapq.heappush(heap, (t, items[0][0], len(live) - 1))

        in_batch = counted = 0
        while True:
            while heap and live[heap[0][2]].done:
                heapq.heappop(heap)
            # Emails moved in bulk that the engine claims before the next one decided here.
            ahead = _count_before(settled, heap[0][:2] if heap else None) - counted
            if ahead:
                take = min(ahead, self.batch_size - in_batch)
                counted += take
                in_batch += take
                if in_batch == self.batch_size:
                    in_batch = 0
                    join_held()
                    continue
            if not heap:
                if not held:
                    return
                in_batch = 0  # the claim found fewer due emails than a batch
                join_held()
                continue
            _, _, i = heapq.heappop(heap)
            bucket = live[i]
            _, index = bucket.items[bucket.pos]
            bucket.pos += 1
            if bucket.pos < len(bucket.items):
                heapq.heappush(heap, (bucket.due, bucket.items[bucket.pos][0], i))
            else:
                bucket.done = True
            sent = self._one(index, bucket.cls, t, day, held)
            if sent and self._all_blocked(live, held, t):
                return
            in_batch += 1
            if in_batch == self.batch_size:
                in_batch = 0
                join_held()

    def _blocked(self, cls_id: int, t: datetime) -> Defer | Exit | None:
        """The decision shared by every email of this class at `t`, if it cannot be sent.

        Remembered until the next message is sent (`_one` forgets), the only thing that
        changes the throttles within a pass."""
        key = (cls_id, t)
        if key not in self.memo:
            self.memo[key] = self._blocked_now(cls_id, t)
        return self.memo[key]

    def _blocked_now(self, cls_id: int, t: datetime) -> Defer | Exit | None:
        cls = self.classes[cls_id]
        if cls.message in _MOVES_ON or cls.message in _ENDS:
            return None  # settled one by one
        if cls.message == _RETRY:
            return self._retry_blocked(cls, t)
        return rules.blocked(self.items[cls_id], self.state, self.senders, t)

    def _retry_blocked(self, cls: _Class, t: datetime) -> Defer | Exit | None:
        if self.schedule.ended(t):
            return Exit(rules.CAMPAIGN_ENDED)
        assert cls.tz is not None
        at, reason = rules.earliest_send(self.schedule, cls.tz, t, cls.open_hour)
        return Defer(reason, at) if reason is not None else None

    def _settle_in_bulk(self, bucket: _Bucket, t: datetime, *, only_final: bool) -> bool:
        """Move the rest of `bucket` as one when its decision is known; True if it moved.

        `only_final`: only decisions no send of this pass can change (window, schedule, end,
        campaign limit, no sender); a sender's gap or limit can turn into the campaign's limit
        if other emails are sent first.
        """
        decision = self._blocked(bucket.cls, t)
        if decision is None:
            return False
        if only_final and isinstance(decision, Defer) and decision.reason in _SENDER_REASONS:
            return False
        if isinstance(decision, Defer) and bucket.pos < len(bucket.items):
            self._put(decision.until, bucket.cls, bucket.items, bucket.pos)
        bucket.pos, bucket.done = len(bucket.items), True
        return True

    def _all_blocked(self, live: list[_Bucket], held: list[int], t: datetime) -> bool:
        """When no email left in this pass can be sent, nothing changes any more in it: move
        every remaining one in bulk. True if that happened."""
        remaining = [b for b in live if not b.done]
        if self._rotation_open(t) and any(
            self.classes[b.cls].message is None and self.items[b.cls].step_sender is None
            for b in remaining
        ):
            return False  # in their window (the rest went in bulk), and a sender is ready
        held_classes = {self._class_of(i, self.people[i].step or "") for i in held}
        if any(self._blocked(b.cls, t) is None for b in remaining) or any(
            self._blocked(c, t) is None for c in held_classes
        ):
            return False
        for bucket in remaining:
            self._settle_in_bulk(bucket, t, only_final=False)
        for index in held:
            cls = self._class_of(index, self.people[index].step or "")
            decision = self._blocked(cls, t)
            if isinstance(decision, Defer):
                self._put(decision.until, cls, [(self.orders[index], index)])
        held.clear()
        return True

    def _rotation_open(self, t: datetime) -> bool:
        """Whether the campaign may send at `t` from its rotation (limit and senders)."""
        return not self.state.at_limit(t) and any(
            not s.paused and s.available_at(t) <= t
            for s in (self.senders.get(i) for i in self.campaign.senders)
            if s is not None
        )

    def _one(self, index: int, cls_id: int, t: datetime, day: date, held: list[int]) -> bool:
        """Decide one email; True if it was sent."""
        cls = self.classes[cls_id]
        person = self.people[index]
        if cls.message in _ENDS:
            return False
        if cls.message in _MOVES_ON:
            self._after_email(index, t, held)
            return False
        if cls.message == _RETRY:
            decision: rules.Decision | None = self._retry_blocked(cls, t)
            if decision is None:
                decision = Send(None)  # its sender and counts were taken when it was queued
        else:
            decision = rules.decide(self.items[cls_id], self.state, self.senders, t)
        if isinstance(decision, Send):
            self.memo.clear()
            self._count(day, cls.step)
            if self.on_send is not None:
                self.on_send(t, person.contact_id, cls.step, decision.sender_id)
            self._after_email(index, t, held)
            return True
        if isinstance(decision, Defer):
            self._put(decision.until, cls_id, [(self.orders[index], index)])
        return False

    def _count(self, day: date, step: str) -> None:
        if day <= self.days[-1]:
            self.counts[(day, step)] += 1
        else:
            self.later += 1
        if self.last_day is None or day > self.last_day:
            self.last_day = day

    def _after_email(self, index: int, t: datetime, held: list[int]) -> None:
        person = self.people[index]
        person.message = None
        assert person.step is not None
        target = self.steps[person.step].next
        if target is None:
            return  # completed
        step = self.steps[target]
        if step.kind == "email":
            person.step, person.due = target, t
            held.append(index)
        else:
            self._place(
                index, target, rules.entering(step.kind, t, step.wait_duration, step.wait_until)
            )


_SENDER_REASONS = frozenset({rules.SENDER_GAP, rules.SENDER_LIMIT, rules.SENDER_PAUSED})


def _count_before(
    runs: Sequence[tuple[datetime, list[tuple[Any, int]], int]], key: tuple[datetime, Any] | None
) -> int:
    """How many items of the sorted runs (due, items, start) come before `key` = (due, order)
    in the claim's order (all of them when `key` is None)."""
    total = 0
    for due, items, start in runs:
        if key is None or due < key[0]:
            total += len(items) - start
        elif due == key[0]:
            total += bisect.bisect_left(items, (key[1],), lo=start) - start
    return total


def _order(contact_id: Hashable) -> Any:
    """The claim's tie-break, contact id, as a value that sorts like PostgreSQL's uuid."""
    return contact_id.int if isinstance(contact_id, uuid.UUID) else contact_id


def _copy_contact(contact: Mapping[str, Any]) -> dict[str, Any]:
    copied = dict(contact)
    copied["attributes"] = dict(copied.get("attributes") or {})
    copied["tags"] = list(copied.get("tags") or [])
    return copied


def _apply(action: Any, contact: dict[str, Any]) -> None:
    """What an action does to the simulated contact (list membership changes nothing here)."""
    if action.kind == "tag" and action.name not in contact["tags"]:
        contact["tags"].append(action.name)
    elif action.kind == "untag":
        contact["tags"] = [t for t in contact["tags"] if t != action.name]
    elif action.kind == "set":
        contact.update(action.columns)
        contact["attributes"].update(action.attributes)
        for name in action.removed_attributes:
            contact["attributes"].pop(name, None)


def _when(t: datetime, tz: ZoneInfo) -> str:
    return t.astimezone(tz).strftime("%a %Y-%m-%d %H:%M %Z")


# --------------------------------------------------------------------------- loading


_CAMPAIGN = sa.text(
    """
    select c.id, c.name, c.status, c.timezone, c.send_strategy, c.start_at, c.end_at, c.list_id,
           st.send_window_start, st.send_window_end, st.send_days, st.daily_limit,
           st.stop_on_reply
    from app.campaigns c
    left join app.campaign_settings st on st.campaign_id = c.id
    where c.id = :id
    """
)
_CAMPAIGN_NAMED = sa.text("select id from app.campaigns where name = :name")
# Every message counts except one that failed before any SMTP conversation (as the engine).
_STEPS = sa.text(
    """
    select s.id, s.key, s.step_type, s.removed_at, s.next_step_id, s.true_next_step_id,
           s.false_next_step_id, s.wait_duration, s.wait_until, s.condition_rules,
           s.action_payload, s.sender_account_id
    from app.campaign_steps s
    where s.campaign_id = :id
    order by s.removed_at nulls first, s.step_order, s.key
    """
)
# The campaign's senders (in rotation order) and its live steps' own senders, with their usage
# of the UTC day so far (every campaign's) and their last message, as the engine loads them.
_SENDERS = sa.text(
    f"""
    select sa.id, sa.daily_limit, sa.min_gap_seconds, sa.is_active, cs.position,
           (
               select count(*) from app.sent_emails m
               where m.tenant_id = sa.tenant_id and m.sender_account_id = sa.id
                 and m.queued_at >= :utc_day_start
                 and {COUNTS_AGAINST_LIMITS}
           ) as sent_today,
           (
               select max(m.queued_at) from app.sent_emails m
               where m.tenant_id = sa.tenant_id and m.sender_account_id = sa.id
           ) as last_queued_at
    from app.sender_accounts sa
    left join app.campaign_senders cs on cs.sender_account_id = sa.id and cs.campaign_id = :id
    where sa.id in (
        select cs2.sender_account_id from app.campaign_senders cs2 where cs2.campaign_id = :id
        union
        select s.sender_account_id from app.campaign_steps s
        where s.campaign_id = :id and s.removed_at is null and s.sender_account_id is not null
    )
    order by cs.position nulls last, sa.id
    """
)
# Enrollments still under way, with what a pass would stop them for: a contact no longer
# active or suppressed, a reply to this campaign by it or by someone at its domain.
_ENROLLMENTS = sa.text(
    f"""
    select cc.contact_id, cc.current_step_id, cc.next_run_at,
           to_jsonb(ct) - 'raw_data' as contact,
           m.status as message_status,
           (ct.status <> 'active' or exists (
               select from app.suppressions sup
               where sup.tenant_id = ct.tenant_id and lower(sup.email) = lower(ct.email)
           )) as stopped,
           exists (
               select from app.email_events e
               where e.tenant_id = cc.tenant_id and e.campaign_id = cc.campaign_id
                 and e.contact_id = cc.contact_id and e.event_type = 'reply'
           ) as replied,
           exists (
               select from app.email_events e
               join app.contacts other on other.id = e.contact_id
               where e.tenant_id = cc.tenant_id and e.campaign_id = cc.campaign_id
                 and e.event_type = 'reply' and {COMPANY_STOPPING}
                 and lower(split_part(other.email, '@', 2)) = lower(split_part(ct.email, '@', 2))
           ) as company_replied
    from app.campaign_contacts cc
    join app.contacts ct on ct.id = cc.contact_id
    left join app.sent_emails m
        on m.campaign_contact_id = cc.id and m.step_id = cc.current_step_id
    where cc.campaign_id = :id and cc.status in ('enrolled', 'active')
    order by cc.contact_id
    """
)
# Members of the list a pass would enroll: active, not suppressed, never enrolled here.
_MEMBERS = sa.text(
    """
    select ct.id as contact_id, to_jsonb(ct) - 'raw_data' as contact
    from app.contact_list_members lm
    join app.contacts ct on ct.id = lm.contact_id
    where lm.list_id = :list_id and ct.status = 'active'
      and not exists (
          select from app.suppressions sup
          where sup.tenant_id = ct.tenant_id and lower(sup.email) = lower(ct.email)
      )
      and not exists (
          select from app.campaign_contacts cc
          where cc.campaign_id = :id and cc.contact_id = ct.id
      )
    order by ct.id
    """
)
# Engagement the conditions of enrollments under way read: each one's distinct (type, step),
# found by index (email_events_campaign_contact_idx), not every event of the campaign.
_EVENTS = sa.text(
    """
    select cc.contact_id, e.event_type, e.step_id
    from app.campaign_contacts cc
    cross join lateral (
        select distinct e.event_type, e.step_id
        from app.email_events e
        where e.tenant_id = cc.tenant_id and e.campaign_id = cc.campaign_id
          and e.contact_id = cc.contact_id and e.event_type in ('open', 'click', 'reply')
          and not e.is_machine
    ) e
    where cc.campaign_id = :id and cc.status in ('enrolled', 'active')
    """
)
# An optimized campaign's usual open hours read every open (any campaign) of the contacts it
# may still send to: enrollments under way and list members a pass would enroll.
_OPENS = sa.text(
    """
    select e.contact_id, array_agg(e.occurred_at order by e.occurred_at) as opens
    from app.email_events e
    where e.event_type = 'open' and not e.is_machine
      and e.contact_id in (
          select cc.contact_id from app.campaign_contacts cc
          where cc.campaign_id = :id and cc.status in ('enrolled', 'active')
          union
          select lm.contact_id from app.contact_list_members lm
          where lm.list_id = :list_id
            and not exists (
                select from app.campaign_contacts cc
                where cc.campaign_id = :id and cc.contact_id = lm.contact_id
            )
      )
    group by e.contact_id
    """
)


def forecast_named(
    conn: Connection,
    name: str,
    now: datetime,
    days: int = 30,
    pass_every: timedelta = PASS_EVERY,
    batch_size: int = BATCH_SIZE,
) -> Forecast:
    """`forecast` of the tenant's campaign called `name` (ForecastError if there is none)."""
    campaign_id = conn.execute(_CAMPAIGN_NAMED, {"name": name}).scalar()
    if campaign_id is None:
        listing = penguin_command("campaign list", current_tenant_name(conn))
        raise ForecastError(f"no campaign named {shown(name)!r} (see `{listing}`)")
    return forecast(conn, campaign_id, now, days, pass_every, batch_size)


def forecast(
    conn: Connection,
    campaign_id: uuid.UUID,
    now: datetime,
    days: int = 30,
    pass_every: timedelta = PASS_EVERY,
    batch_size: int = BATCH_SIZE,
) -> Forecast:
    """Load campaign `campaign_id` (in the connection's tenant) and `simulate` it from `now`.

    Reads only. `batch_size` is the engine's claim batch (`scheduler.Config.batch_size`)."""
    campaign, enrollments, senders = load(conn, campaign_id, now)
    return simulate(
        campaign,
        enrollments,
        senders,
        now,
        days=days,
        pass_every=pass_every,
        batch_size=batch_size,
    )


def load(
    conn: Connection, campaign_id: uuid.UUID, now: datetime
) -> tuple[SimCampaign, list[SimEnrollment], dict[Hashable, SenderState]]:
    """Everything `simulate` needs, as the engine would see it at `now`."""
    row = conn.execute(_CAMPAIGN, {"id": campaign_id}).one_or_none()
    if row is None:
        raise ForecastError(f"no campaign {campaign_id}")
    tz = rules.campaign_timezone(row.timezone)
    defaults = rules.Window()
    try:
        window = rules.Window(
            row.send_window_start or defaults.start,
            row.send_window_end if row.send_window_end is not None else defaults.end,
            frozenset(row.send_days) if row.send_days else defaults.days,
        )
        schedule = Schedule(
            tz=tz,
            window=window,
            strategy=row.send_strategy,
            start_at=row.start_at,
            end_at=row.end_at,
            daily_limit=row.daily_limit or Schedule().daily_limit,
        )
    except ValueError as exc:
        raise ForecastError(f"campaign {shown(row.name)}: {exc}") from exc
    sent_today = campaign_sends_today(conn, {campaign_id: row.timezone}, now)[campaign_id]

    step_rows = conn.execute(_STEPS, {"id": campaign_id}).all()
    live = [s for s in step_rows if s.removed_at is None]
    key_of = {s.id: s.key for s in live}
    steps = {
        s.key: SimStep(
            key=s.key,
            kind=s.step_type,
            next=key_of.get(s.next_step_id),
            true_next=key_of.get(s.true_next_step_id),
            false_next=key_of.get(s.false_next_step_id),
            wait_duration=s.wait_duration,
            wait_until=s.wait_until,
            condition=s.condition_rules,
            action=s.action_payload,
            sender=s.sender_account_id,
        )
        for s in live
    }

    utc_day_start = datetime.combine(rules.utc_day(now), rules.MIDNIGHT, UTC)
    sender_rows = conn.execute(_SENDERS, {"id": campaign_id, "utc_day_start": utc_day_start}).all()
    senders: dict[Hashable, SenderState] = {
        s.id: SenderState(
            s.id,
            s.daily_limit,
            timedelta(seconds=s.min_gap_seconds),
            paused=not s.is_active,
            day=rules.utc_day(now),
            sent=s.sent_today,
            last=s.last_queued_at,
        )
        for s in sender_rows
    }
    rotation = tuple(s.id for s in sender_rows if s.position is not None)

    events: dict[Hashable, set[tuple[str, str | None]]] = defaultdict(set)
    for e in conn.execute(_EVENTS, {"id": campaign_id}):
        # Events of removed steps count for `any` only, as in the engine's SQL.
        events[e.contact_id].add((e.event_type, key_of.get(e.step_id)))
    opens: dict[Hashable, tuple[datetime, ...]] = {}
    if row.send_strategy == "optimized":
        params = {"id": campaign_id, "list_id": row.list_id}
        opens = {o.contact_id: tuple(o.opens) for o in conn.execute(_OPENS, params)}

    stop_on_reply = row.stop_on_reply or "contact"
    enrollments: list[SimEnrollment] = []
    for e in conn.execute(_ENROLLMENTS, {"id": campaign_id}):
        if e.stopped or _replied(stop_on_reply, e.replied, e.company_replied):
            continue  # the next pass exits it
        if e.current_step_id not in key_of:
            continue  # its step was deleted: the engine ends it
        enrollments.append(
            SimEnrollment(
                e.contact_id,
                e.contact,
                key_of[e.current_step_id],
                e.next_run_at,
                frozenset(events.get(e.contact_id, ())),
                opens.get(e.contact_id, ()),
                e.message_status,
            )
        )
    if row.list_id is not None and row.status != "completed":
        for m in conn.execute(_MEMBERS, {"id": campaign_id, "list_id": row.list_id}):
            enrollments.append(
                SimEnrollment(m.contact_id, m.contact, opens=opens.get(m.contact_id, ()))
            )
    campaign = SimCampaign(
        id=row.id,
        name=row.name,
        status=row.status,
        schedule=schedule,
        steps=steps,
        senders=rotation,
        sent_today=sent_today,
    )
    return campaign, enrollments, senders


def _replied(stop_on_reply: str, replied: bool, company_replied: bool) -> bool:
    if stop_on_reply == "contact":
        return replied
    if stop_on_reply == "company":
        return company_replied
    return False
