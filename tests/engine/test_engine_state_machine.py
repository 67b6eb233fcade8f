"""A hypothesis state machine drives the real engine and checks its promises after every move.

Each example is a fresh tenant with one branching campaign (intro, wait, condition on
engagement, a warm or a cold follow-up), two sender accounts (one with a small daily limit, one
with a minimum gap) and a handful of contacts in several time zones whose addresses choose what
the real SMTP server answers them (tests/smtp_faults.py: 421 or 451 on RCPT, 550 on RCPT, 554
on DATA, the connection cut after DATA, or 250). The machine then runs full engine passes
(`send_due` at the fake clock's `now`), moves the clock by minutes or by days (across nights
and weekends), inserts opens, clicks and replies, unsubscribes and suppresses contacts, adds
contacts, pauses and resumes the campaign, and crashes passes:

* between any two statements: from the n-th statement of a pass on, every statement and
  commit of the process fails, as if it had died there (what was committed stays, what was
  not is rolled back, nothing it had not yet marked `sending` goes out);
* a pause that lands while a pass is sending (from the SMTP server, in the middle of DATA);
* a worker that stalls in the middle of a conversation past its lease while another worker
  takes its enrollments over, then wakes up and carries on with its old `now`.

After every move the database and the SMTP servers' mailboxes must show: at most one message
per (enrollment, step), and no message delivered twice; nothing delivered during a pause, to an
address suppressed or a contact who replied or unsubscribed, or outside the window and days in
the contact's own time zone; no campaign-day or sender-day count over its limit and no two
messages of the gapped sender closer than its gap. A crash leaves at most the courier's
concurrency of messages `sending`, and a pass that finishes leaves none. At the end of each
example the clock runs on until every enrollment has finished: nothing is left `sending`, and
every message settled as its address's answer says (or `unknown`).

Below the machine, the two engine bugs it found, each reduced to one deterministic case.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time as stopwatch
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from email.parser import BytesHeaderParser
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
from hypothesis import HealthCheck, Phase, settings
from hypothesis import event as hypothesis_event
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy.engine import Engine

from engine import campaign_files as cf
from engine.campaigns import launch_campaign, pause_campaign, resume_campaign
from engine.db import Database, tenant_transaction
from engine.senders import create_sender
from engine.sending import store
from engine.sending.messenger import CourierConfig
from engine.sending.scheduler import Config, SendReport, send_due
from engine.tenants import create_tenant
from tests.engine.campaign_rows import add_contact, add_event
from tests.smtp_faults import FaultServer

CAMPAIGN_TZ = ZoneInfo("America/New_York")
WINDOW = (time(9), time(17))
DAYS = frozenset({1, 2, 3, 4, 5})
CAMPAIGN_DAILY = 8
#: sender: (daily limit per UTC day, minimum gap in seconds)
SENDERS = {"fast": (6, 0), "slow": (40, 20 * 60)}
CONCURRENCY = 3
LEASE = timedelta(minutes=5)
CONFIG = Config(batch_size=4, lease=LEASE, courier=CourierConfig(concurrency=CONCURRENCY))
#: Thursday 19 November 2026, 09:00 in New York.
START = datetime(2026, 11, 19, 14, 0, tzinfo=UTC)
#: What the SMTP server does with a recipient, by the prefix of its local part.
KINDS = ("", "", "", "r421-", "r451-", "r550-", "d554-", "drop-after-data-")
#: Contact time zones; None and a misspelt name fall back to the campaign's.
ZONES = (None, "Europe/Berlin", "America/Los_Angeles", "Asia/Kolkata", "Europe/Berln")

CAMPAIGN = """
name: machine
list: machine
senders: [fast@{domain}, slow@{domain}]
timezone: America/New_York
schedule: {{strategy: immediate, window: "09:00-17:00", days: [mon, tue, wed, thu, fri]}}
limits: {{daily: {daily}}}
stop_on_reply: contact
steps:
  - id: intro
    email: {{subject: "intro for {{{{ first_name }}}}", text: "Hi {{{{ first_name }}}}"}}
  - id: pause
    wait: 2h
  - id: warm?
    condition: {{any: [{{opened: intro}}, {{clicked: intro}}]}}
    then: warm
    else: tag-cold
  - id: warm
    email: {{subject: "warm for {{{{ first_name }}}}", text: "Glad you looked"}}
    next: end
  - id: tag-cold
    action: {{tag: cold}}
  - id: cold
    email: {{subject: "cold for {{{{ first_name }}}}", text: "One more try"}}
"""

_MESSAGES = sa.text(
    """
    select m.id, m.campaign_contact_id, m.step_id, s.key as step, m.sender_account_id,
           sa.email as sender, m.recipient_email, m.message_id, m.status, m.attempts,
           m.queued_at, m.sent_at, ct.timezone, cc.exited_at, sup.created_at as suppressed_at
    from app.sent_emails m
    join app.campaign_steps s on s.id = m.step_id
    join app.sender_accounts sa on sa.id = m.sender_account_id
    join app.contacts ct on ct.id = m.contact_id
    join app.campaign_contacts cc on cc.id = m.campaign_contact_id
    left join app.suppressions sup on lower(sup.email) = lower(m.recipient_email)
    """
)
_ENROLLMENTS = sa.text(
    """
    select ct.email, cc.status, cc.exit_reason, cc.next_run_at, cc.lease_expires_at
    from app.campaign_contacts cc join app.contacts ct on ct.id = cc.contact_id
    """
)
_NEXT_DUE = sa.text(
    """
    select min(greatest(next_run_at, lease_expires_at + interval '1 second'))
    from app.campaign_contacts where status in ('enrolled', 'active')
    """
)
#: Text of the statement that marks messages `sending` (store.MARK_SENDING).
_MARKING = "set status = 'sending'"
_STATUS = sa.text("select status from app.campaigns where id = :id")
_LIST_ID = sa.text("select list_id from app.campaigns where id = :id")
_UNSUBSCRIBE = sa.text(
    "update app.contacts set status = 'unsubscribed', updated_at = :now where lower(email) = :email"
)
_INTRO = sa.text("select id from app.campaign_steps where key = 'intro' and campaign_id = :id")


#: What the examples of a run did, by kind (also hypothesis events): the test checks that the
#: machine did crash passes and deliver messages, not only move the clock.
SEEN: Counter[str] = Counter()


def event(text: str) -> None:
    SEEN[text] += 1
    hypothesis_event(text)


class Crash(Exception):
    """The process died here: this statement and every later one never ran."""


@contextmanager
def crash_after(
    engine: Engine, statements: int, *, counting_from: str | None = None
) -> Iterator[threading.Event]:
    """From statement number `statements + 1` on (of any thread), every statement and every
    commit through `engine` fails: what was committed stays, the transactions under way roll
    back, as when a process is killed. With `counting_from`, statements are counted from the
    first one that holds that text. The event tells whether it happened."""
    counter = itertools.count(1)
    lock = threading.Lock()
    counting = threading.Event()
    dead = threading.Event()
    if counting_from is None:
        counting.set()

    def before_statement(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if counting_from is not None and counting_from in statement:
            counting.set()
        if not counting.is_set():
            return
        with lock:
            n = next(counter)
        if dead.is_set() or n > statements:
            dead.set()
            raise Crash(f"the worker died after {statements} statements")

    def before_commit(*_args: object) -> None:
        if dead.is_set():
            raise Crash(f"the worker died after {statements} statements")

    sa.event.listen(engine, "before_cursor_execute", before_statement)
    sa.event.listen(engine, "commit", before_commit)
    try:
        yield dead
    finally:
        sa.event.remove(engine, "before_cursor_execute", before_statement)
        sa.event.remove(engine, "commit", before_commit)


@dataclass(frozen=True)
class Delivery:
    """One message that reached an SMTP server, and the `now` of the pass that sent it."""

    recipient: str
    step: str  # intro | warm | cold, from the subject
    message_id: str
    at: datetime


@dataclass(frozen=True)
class Traffic:
    """What one pass (at `at`) did at an SMTP server: RCPTs asked for, messages received."""

    deliveries: list[Delivery]
    attempts: list[str]
    at: datetime


def _zone(name: str | None) -> ZoneInfo:
    """The contact's time zone as the issue defines it: its own when it is a real IANA name,
    else the campaign's (computed here without the engine's rules)."""
    if not name:
        return CAMPAIGN_TZ
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return CAMPAIGN_TZ


def _in_window(t: datetime, tz: ZoneInfo) -> bool:
    local = t.astimezone(tz)
    return local.isoweekday() in DAYS and WINDOW[0] <= local.time() < WINDOW[1]


@dataclass
class Contact:
    id: uuid.UUID
    email: str
    zone: ZoneInfo
    kind: str
    #: When it replied, unsubscribed or was suppressed: nothing may reach it from then on.
    stopped_at: datetime | None = None


def record_recipients(server: FaultServer) -> list[str]:
    """Every RCPT `server` is asked for, delivered or not (a message's SMTP attempt)."""
    attempts: list[str] = []
    original = server.handler.handle_RCPT

    async def handle_rcpt(smtp, session, envelope, address, rcpt_options):  # noqa: N802
        attempts.append(address.lower())
        return await original(smtp, session, envelope, address, rcpt_options)

    server.handler.handle_RCPT = handle_rcpt
    return attempts


@dataclass
class World:
    """What every example shares: the database, the SMTP servers, a counter for tenants."""

    database: Database
    main: FaultServer
    aux: FaultServer  # where a second worker delivers while the first one is stalled
    examples: Iterator[int] = field(default_factory=itertools.count)
    #: RCPTs each server was asked for, by id(server).
    attempts: dict[int, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for server in (self.main, self.aux):
            self.attempts[id(server)] = record_recipients(server)


def machine_for(world: World) -> type[RuleBasedStateMachine]:
    class EngineMachine(RuleBasedStateMachine):
        """One example: a fresh tenant, its campaign and contacts, at START."""

        def __init__(self) -> None:
            super().__init__()
            self.db = world.database
            self.now = START
            self.paused = False
            n = next(world.examples)
            self.domain = f"m{n}.example"
            self.tenant_id, _ = create_tenant(self.db.owner, f"machine{n}")
            #: Deliveries of this example: where each server's mailbox started.
            self.seen = {
                id(s): (len(s.arrivals), len(world.attempts[id(s)]))
                for s in (world.main, world.aux)
            }
            self.deliveries: list[Delivery] = []
            self.contacts: list[Contact] = []
            with self.tx() as conn:
                for name, (limit, gap) in SENDERS.items():
                    create_sender(
                        conn, f"{name}@{self.domain}", name, daily_limit=limit, min_gap_seconds=gap
                    )
                text = CAMPAIGN.format(domain=self.domain, daily=CAMPAIGN_DAILY)
                self.campaign_id = cf.apply(
                    conn, cf.loads(text, "machine.yaml"), self.now
                ).campaign_id
                self.list_id = conn.execute(_LIST_ID, {"id": self.campaign_id}).scalar_one()

        @initialize(
            people=st.lists(
                st.tuples(st.sampled_from(KINDS), st.sampled_from(ZONES)), min_size=3, max_size=8
            )
        )
        def launch_to_a_list(self, people: list[tuple[str, str | None]]) -> None:
            for kind, zone in people:
                self._add(kind, zone)
            with self.tx() as conn:
                launch_campaign(conn, self.campaign_id, self.now)

        @contextmanager
        def tx(self) -> Iterator[sa.Connection]:
            with tenant_transaction(self.db.app, self.tenant_id) as conn:
                yield conn

        def _add(self, kind: str, zone: str | None) -> None:
            i = len(self.contacts)
            email = f"{kind}p{i}@{self.domain}"
            with self.tx() as conn:
                contact_id = add_contact(
                    conn, email, list_id=self.list_id, first_name=f"P{i}", timezone=zone
                )
            self.contacts.append(Contact(contact_id, email, _zone(zone), kind))

        # ------------------------------------------------------------------ passes

        def _collect(self, server: FaultServer, at: datetime) -> Traffic:
            """What `server` was asked and received since last asked, by a pass at `at`."""
            arrived, asked = self.seen[id(server)]
            new = server.arrivals[arrived:]
            attempts = world.attempts[id(server)][asked:]
            self.seen[id(server)] = (arrived + len(new), asked + len(attempts))
            parsed = []
            for arrival in new:
                headers = BytesHeaderParser().parsebytes(arrival.content)
                for recipient in arrival.rcpt_tos:
                    parsed.append(
                        Delivery(
                            recipient.lower(),
                            str(headers["Subject"]).split()[0],
                            str(headers["Message-ID"]).strip("<>"),
                            at,
                        )
                    )
            self.deliveries += parsed
            if parsed:
                event("delivered")
            return Traffic(parsed, attempts, at)

        def _statuses(self) -> dict[uuid.UUID, str]:
            with self.tx() as conn:
                return {m.id: m.status for m in conn.execute(_MESSAGES)}

        def _check_pass(self, traffic: Traffic, paused: bool) -> None:
            """Every message a pass tried (delivered or not) respects the pause, the stops and
            the window of its contact's time zone at the pass's `now`."""
            if paused:
                assert not traffic.attempts, f"tried while paused: {traffic.attempts}"
            at = traffic.at
            stopped = {
                c.email.lower() for c in self.contacts if c.stopped_at and c.stopped_at <= at
            }
            zones = {c.email.lower(): c.zone for c in self.contacts}
            for recipient in traffic.attempts:
                assert recipient not in stopped, f"tried {recipient} after it stopped, at {at}"
                assert _in_window(at, zones[recipient]), f"tried {recipient} at {at}"

        def _pass(self, at: datetime, *, server: FaultServer | None = None) -> SendReport:
            """One engine pass over this example's tenant."""
            server = server or world.main
            return send_due(self.db.app, server.smtp, at, config=CONFIG, tenants=[self.tenant_id])

        @rule()
        def run_a_pass(self) -> None:
            before = self._statuses()
            report = self._pass(self.now)
            assert not [e for e in report.errors if "could not record" in e], report.errors
            self._check_pass(self._collect(world.main, self.now), self.paused)
            # A pass that ends normally leaves nothing of its own in doubt.
            after = self._statuses()
            left = [i for i, s in after.items() if s == "sending" and before.get(i) != "sending"]
            assert not left, "a finished pass left messages `sending`"

        # A pass of this machine runs 10 to 35 statements: most crashes land inside one.
        @rule(statements=st.integers(min_value=1, max_value=20), while_sending=st.booleans())
        def crash_a_pass(self, statements: int, while_sending: bool) -> None:
            """The worker dies after `statements` statements of the pass, or, `while_sending`,
            after a few statements from its first message marked `sending` on."""
            self.the_clock_reaches_the_next_due_time()  # a pass with work to do
            before = self._statuses()
            counting_from = _MARKING if while_sending else None
            if while_sending:
                statements %= 2 * CONCURRENCY + 1
            with crash_after(self.db.app, statements, counting_from=counting_from) as died:
                try:
                    self._pass(self.now)
                except Exception:
                    if not died.is_set():
                        raise
            event(f"crash: {'died' if died.is_set() else 'finished first'}")
            self._check_pass(self._collect(world.main, self.now), self.paused)
            after = self._statuses()
            # Only the conversations under way when it died are in doubt, never a whole batch.
            in_doubt = [
                i for i, s in after.items() if s == "sending" and before.get(i) != "sending"
            ]
            assert len(in_doubt) <= CONCURRENCY, f"{len(in_doubt)} messages left `sending`"
            event(f"crash: {len(in_doubt)} left in doubt")

        @rule(nth=st.integers(min_value=1, max_value=2))
        def pause_in_the_middle_of_a_pass(self, nth: int) -> None:
            """The operator pauses while the pass is sending: when the `nth` message of the pass
            is in DATA. Only conversations already under way may still finish."""
            self.resume()
            self.the_clock_reaches_the_next_due_time()
            handler = world.main.handler
            original = handler.handle_DATA
            start = len(world.main.arrivals)
            asked: list[bool] = []
            was_running: list[bool] = []
            paused_with: list[int] = []

            def pause() -> None:
                was_running.append(self._pause())

            async def handle_data(server, session, envelope):  # noqa: N802
                reply = await original(server, session, envelope)
                if not asked and len(world.main.arrivals) - start >= nth:
                    asked.append(True)  # once: other conversations run on meanwhile
                    await asyncio.get_running_loop().run_in_executor(None, pause)
                    paused_with.append(len(world.main.arrivals))
                return reply

            handler.handle_DATA = handle_data
            try:
                self._pass(self.now)
            finally:
                del handler.handle_DATA
            event(f"pause in a pass: {'paused' if paused_with else 'too few messages'}")
            if paused_with and was_running[0]:
                after_pause = len(world.main.arrivals) - paused_with[0]
                assert after_pause <= CONCURRENCY, f"{after_pause} messages went after the pause"
            self._check_pass(self._collect(world.main, self.now), False)

        @rule(nth=st.integers(min_value=1, max_value=2))
        def a_worker_stalls_past_its_lease(self, nth: int) -> None:
            """The first worker stalls in the `nth` conversation of its pass; its lease runs
            out and a second worker, a lease later, takes its enrollments over (delivering to
            another server); then the first one wakes up and carries on with its old `now`."""
            self.the_clock_reaches_the_next_due_time()
            handler = world.main.handler
            original = handler.handle_DATA
            start = len(world.main.arrivals)
            later = self.now + LEASE + timedelta(minutes=1)
            stalled: list[bool] = []

            def other_worker() -> None:
                self._pass(later, server=world.aux)

            async def handle_data(server, session, envelope):  # noqa: N802
                if not stalled and len(world.main.arrivals) - start + 1 >= nth:
                    stalled.append(True)
                    await asyncio.get_running_loop().run_in_executor(None, other_worker)
                return await original(server, session, envelope)

            handler.handle_DATA = handle_data
            try:
                self._pass(self.now)
            finally:
                del handler.handle_DATA
            self._check_pass(self._collect(world.aux, later), self.paused)
            self._check_pass(self._collect(world.main, self.now), self.paused)
            event(f"stalled worker: {'taken over' if stalled else 'too few messages'}")
            if stalled:
                self.now = later

        # ------------------------------------------------------------------ the world moves

        @rule(minutes=st.integers(min_value=1, max_value=180))
        def minutes_pass(self, minutes: int) -> None:
            self.now += timedelta(minutes=minutes)

        @rule(hours=st.integers(min_value=4, max_value=80))
        def days_pass(self, hours: int) -> None:
            self.now += timedelta(hours=hours)

        @rule()
        def the_clock_reaches_the_next_due_time(self) -> None:
            """As the sensor does: the next pass comes when something falls due."""
            with self.tx() as conn:
                due = conn.execute(_NEXT_DUE).scalar()
            if due is not None:
                self.now = max(self.now, due)

        def _contact(self, index: int) -> Contact:
            return self.contacts[index % len(self.contacts)]

        @rule(
            index=st.integers(min_value=0, max_value=50),
            event_type=st.sampled_from(["open", "click", "reply"]),
            of_intro=st.booleans(),
        )
        def engagement(self, index: int, event_type: str, of_intro: bool) -> None:
            contact = self._contact(index)
            with self.tx() as conn:
                step = (
                    conn.execute(_INTRO, {"id": self.campaign_id}).scalar_one()
                    if of_intro
                    else None
                )
                add_event(conn, event_type, contact.id, self.campaign_id, step, self.now)
            if event_type == "reply" and contact.stopped_at is None:
                contact.stopped_at = self.now

        @rule(index=st.integers(min_value=0, max_value=50), unsubscribe=st.booleans())
        def stop_a_contact(self, index: int, unsubscribe: bool) -> None:
            """An unsubscribe (the contact and its address), or a manual suppression (only the
            address)."""
            contact = self._contact(index)
            with self.tx() as conn:
                reason = "unsubscribe" if unsubscribe else "manual"
                conn.execute(
                    store.SUPPRESS,
                    {"email": contact.email, "reason": reason, "detail": None, "now": self.now},
                )
                if unsubscribe:
                    conn.execute(_UNSUBSCRIBE, {"email": contact.email.lower(), "now": self.now})
            if contact.stopped_at is None:
                contact.stopped_at = self.now

        @precondition(lambda self: len(self.contacts) < 12)
        @rule(kind=st.sampled_from(KINDS), zone=st.sampled_from(ZONES))
        def a_contact_joins_the_list(self, kind: str, zone: str | None) -> None:
            self._add(kind, zone)

        # No preconditions on what the engine did: a crash's timing is not repeatable, and
        # hypothesis must be able to replay an example's rules.
        def _pause(self) -> bool:
            """Pause the campaign if it is still running; whether it was."""
            with self.tx() as conn:
                if conn.execute(_STATUS, {"id": self.campaign_id}).scalar_one() != "active":
                    return False
                pause_campaign(conn, self.campaign_id, self.now)
            self.paused = True
            return True

        @rule()
        def pause(self) -> None:
            self._pause()

        @rule()
        def resume(self) -> None:
            if self.paused:
                with self.tx() as conn:
                    resume_campaign(conn, self.campaign_id, self.now)
                self.paused = False

        # ------------------------------------------------------------------ invariants

        @invariant()
        def promises_hold(self) -> None:
            with self.tx() as conn:
                messages = conn.execute(_MESSAGES).all()
            check_messages(messages, self.deliveries)

        def teardown(self) -> None:
            """Run the clock on until every enrollment has finished: nothing stays queued or
            in doubt, and every message settled as its address's answer says."""
            if self.paused:
                self.resume()
            for _ in range(200):
                with self.tx() as conn:
                    live = [
                        e for e in conn.execute(_ENROLLMENTS) if e.status in ("enrolled", "active")
                    ]
                if not live:
                    break
                due = min(
                    max(e.next_run_at or self.now, e.lease_expires_at or self.now) for e in live
                )
                self.now = max(self.now + timedelta(minutes=5), due + timedelta(seconds=1))
                before = self._statuses()
                self._pass(self.now)
                self._check_pass(self._collect(world.main, self.now), False)
                after = self._statuses()
                assert not [
                    i for i, s in after.items() if s == "sending" and before.get(i) != "sending"
                ]
            else:
                raise AssertionError(f"enrollments still live after 200 passes: {live}")
            with self.tx() as conn:
                messages = conn.execute(_MESSAGES).all()
            check_messages(messages, self.deliveries)
            settled = {
                "": {"sent", "unknown"},
                "r421-": {"failed", "unknown"},
                "r451-": {"failed", "unknown"},
                "r550-": {"bounced", "unknown"},
                "d554-": {"failed", "unknown"},
                "drop-after-data-": {"unknown"},
            }
            contacts = {c.email.lower(): c for c in self.contacts}
            for m in messages:
                contact = contacts[m.recipient_email.lower()]
                if m.status == "queued":
                    # Claimed, then its contact stopped before it could go: never sent.
                    assert contact.stopped_at is not None, m
                else:
                    assert m.status in settled[contact.kind], (contact.kind, m)

    return EngineMachine


def check_messages(messages: list[sa.Row], deliveries: list[Delivery]) -> None:
    """The promises, read from the database and the SMTP mailboxes."""
    # At most one message per (enrollment, step), and none delivered twice.
    pairs = Counter((m.campaign_contact_id, m.step_id) for m in messages)
    assert max(pairs.values(), default=0) <= 1, "two messages for one (enrollment, step)"
    delivered = Counter((d.recipient, d.step) for d in deliveries)
    assert max(delivered.values(), default=0) <= 1, f"delivered twice: {+delivered}"
    by_message_id = {m.message_id: m for m in messages}
    for d in deliveries:
        row = by_message_id[d.message_id]
        # A message that arrived is sent or in doubt, never waiting to be tried again.
        assert row.status in ("sent", "unknown", "sending"), (d, row.status)
    sent = [m for m in messages if m.status == "sent"]
    assert {m.message_id for m in sent} <= {d.message_id for d in deliveries}
    for m in sent:
        assert _in_window(m.sent_at, _zone(m.timezone)), f"sent outside the window: {m}"
        if m.exited_at is not None:
            assert m.sent_at <= m.exited_at, f"sent after its enrollment exited: {m}"
        if m.suppressed_at is not None:
            assert m.sent_at <= m.suppressed_at, f"sent after its address was suppressed: {m}"
    # Limits: the campaign's per local day, each sender's per UTC day, the slow one's gap.
    counted = [m for m in messages if not (m.status == "failed" and m.attempts == 0)]
    per_day = Counter(m.queued_at.astimezone(CAMPAIGN_TZ).date() for m in counted)
    assert max(per_day.values(), default=0) <= CAMPAIGN_DAILY, f"campaign days: {per_day}"
    for name, (limit, gap) in SENDERS.items():
        mine = sorted(m.queued_at for m in counted if m.sender.startswith(f"{name}@"))
        days = Counter(t.astimezone(UTC).date() for t in mine)
        assert max(days.values(), default=0) <= limit, f"sender {name}: {days}"
        if gap:
            gaps = [b - a for a, b in itertools.pairwise(mine)]
            assert min(gaps, default=timedelta.max) >= timedelta(seconds=gap), (name, gaps)


def test_the_engine_keeps_its_promises_through_passes_crashes_pauses_and_clock_jumps(
    database, smtp_faults
):
    SEEN.clear()
    world = World(database, smtp_faults.start(), smtp_faults.start())
    run_state_machine_as_test(
        machine_for(world),
        settings=settings(
            # 10 examples of 25 steps: about 55 s here (CI's budget is 20 minutes in all).
            max_examples=10,
            stateful_step_count=25,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
            # No shrinking or explaining: each step is real passes, so they would take many minutes;
            # a failure is reported at once, with the steps of its example.
            phases=[Phase.explicit, Phase.reuse, Phase.generate],
        ),
    )
    assert SEEN["crash: died"] and SEEN["delivered"], SEEN


#: How the statements that record an outcome begin: a delivered message's (store.RECORD_SENT),
#: and the enrollment locks every other outcome takes first (LOCK_ENROLLMENT(S)).
_SETTLING = (
    " ".join(str(store.RECORD_SENT).split()[:7]),
    "select id from app.campaign_contacts where id",
)


def _is_settling(statement: str) -> bool:
    """Whether `statement` is the first of a transaction's settlements."""
    return " ".join(statement.split()).startswith(_SETTLING)


_FIRST_IN_LINE = sa.text(
    """
    update app.campaign_contacts cc set next_run_at = next_run_at - interval '1 minute'
    from app.contacts ct where ct.id = cc.contact_id and ct.email = :email
    """
)


def test_a_crash_while_an_outcome_is_being_recorded_leaves_at_most_the_concurrency_in_doubt(
    database, smtp_faults, now, tmp_path
):
    """Found by the state machine. Two conversations at a time: one server never answers the
    first message's RCPT; the second message is delivered, and while its outcome is being
    recorded (the database is slow) the worker dies. Two messages may be in doubt, those two
    conversations; a third must not have been marked and sent meanwhile."""
    from tests.factories import people, seed_tenant

    server = smtp_faults.start()
    rows = [["hang-first@example.com", "H", "L", "Acme", "pro"], *people("acme", 3)]
    tenant = seed_tenant(database, "acme", now, tmp_path, rows=rows)
    with tenant_transaction(database.app, tenant.tenant_id) as conn:
        conn.execute(_FIRST_IN_LINE, {"email": "hang-first@example.com"})
    config = Config(courier=CourierConfig(concurrency=2, timeout=3))
    dead = threading.Event()

    def slow_then_dead(conn, cursor, statement, *args) -> None:
        if dead.is_set():
            raise Crash("dead")
        if _is_settling(statement):
            stopwatch.sleep(1)  # the database is slow; the worker dies meanwhile
            dead.set()
            raise Crash("dead")

    sa.event.listen(database.app, "before_cursor_execute", slow_then_dead)
    try:
        try:
            send_due(database.app, server.smtp, now, config=config)
        except Exception:
            assert dead.is_set()
    finally:
        sa.event.remove(database.app, "before_cursor_execute", slow_then_dead)

    with tenant_transaction(database.app, tenant.tenant_id) as conn:
        statuses = Counter(conn.execute(sa.text("select status from app.sent_emails")).scalars())
    assert statuses == {"sending": 2, "queued": 2}
    assert len(server.arrivals) == 1


def test_a_message_left_sending_is_in_doubt_even_when_its_contact_stops_before_the_next_pass(
    database, smtp_faults, now, tmp_path
):
    """Found by the state machine: a worker dies while recording a delivered message; before
    the next pass the contact unsubscribes. The next pass ends the enrollment and must still
    mark the message `unknown` (never resent), not leave it `sending` for ever."""
    from tests.factories import seed_tenant

    server = smtp_faults.start()
    rows = [["ann@example.com", "Ann", "Lee", "Acme", "pro"]]
    tenant = seed_tenant(database, "acme", now, tmp_path, rows=rows)

    def dead_when_recording(conn, cursor, statement, *args) -> None:
        if _is_settling(statement):
            raise Crash("dead")

    sa.event.listen(database.app, "before_cursor_execute", dead_when_recording)
    try:
        with contextlib.suppress(Exception):
            send_due(database.app, server.smtp, now)
    finally:
        sa.event.remove(database.app, "before_cursor_execute", dead_when_recording)
    assert len(server.arrivals) == 1
    with tenant_transaction(database.app, tenant.tenant_id) as conn:
        assert conn.execute(sa.text("select status from app.sent_emails")).scalar() == "sending"
        conn.execute(
            store.SUPPRESS,
            {"email": "ann@example.com", "reason": "unsubscribe", "detail": None, "now": now},
        )
        conn.execute(_UNSUBSCRIBE, {"email": "ann@example.com", "now": now})

    report = send_due(database.app, server.smtp, now + LEASE + timedelta(minutes=1))
    assert (report.unknown, report.exited["contact unsubscribed"]) == (1, 1)
    with tenant_transaction(database.app, tenant.tenant_id) as conn:
        row = conn.execute(
            sa.text(
                "select m.status, cc.status as enrollment from app.sent_emails m "
                "join app.campaign_contacts cc on cc.id = m.campaign_contact_id"
            )
        ).one()
    assert tuple(row) == ("unknown", "exited")
    assert len(server.arrivals) == 1
