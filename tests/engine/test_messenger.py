"""The messenger and internationalized addresses, against real aiosmtpd servers with and
without SMTPUTF8: one address a server cannot take ends only its own message."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from email import message_from_bytes, policy

import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller
from hypothesis import event, given, settings
from hypothesis import strategies as st

from engine.db import tenant_transaction
from engine.senders import SmtpServer
from engine.sending.messenger import (
    CallbackError,
    Courier,
    CourierConfig,
    Delivery,
    Outcome,
    OutgoingEmail,
    SendJob,
    deliver,
    plain_bytes,
)
from engine.smtp_sink import SmtpSink
from tests.conftest import NOW, free_port
from tests.factories import seed_tenant

UNICODE_LOCAL = "jörg@example.com"
UNICODE_DOMAIN = "info@bücher.example"
IDNA_DOMAIN = "info@xn--bcher-kva.example"
PLAIN = ["ann@example.com", "bob@example.com"]


@dataclasses.dataclass(frozen=True)
class Arrival:
    mail_from: str
    rcpt_tos: list[str]
    mail_options: list[str]
    message: object
    raw: bytes


class EnvelopeHandler:
    """Keeps the envelope of every message with its content."""

    def __init__(self) -> None:
        self.arrivals: list[Arrival] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        self.arrivals.append(
            Arrival(
                envelope.mail_from,
                list(envelope.rcpt_tos),
                list(envelope.mail_options),
                message_from_bytes(envelope.original_content, policy=policy.SMTPUTF8),
                envelope.original_content,
            )
        )
        return "250 OK"

    def to(self, address: str) -> Arrival:
        [arrival] = [a for a in self.arrivals if a.rcpt_tos == [address]]
        return arrival


@dataclasses.dataclass
class Server:
    smtp: SmtpServer
    handler: EnvelopeHandler


def _server(smtputf8: bool) -> Iterator[Server]:
    handler = EnvelopeHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, enable_SMTPUTF8=smtputf8)
    controller.start()
    yield Server(SmtpServer("127.0.0.1", port), handler)
    controller.stop()


@pytest.fixture
def utf8_server() -> Iterator[Server]:
    yield from _server(smtputf8=True)


@pytest.fixture
def ascii_server() -> Iterator[Server]:
    yield from _server(smtputf8=False)


def _email(recipient: str, n: int = 0, **changes) -> OutgoingEmail:
    email = OutgoingEmail(
        message_id=f"m{n}@acme.example",
        sender_email="sales@acme.example",
        sender_name="Acme Sales",
        recipient=recipient,
        subject="Grüße",
        body_text="Hallo",
        body_html=None,
        date=NOW,
    )
    return dataclasses.replace(email, **changes)


BATCH = [PLAIN[0], UNICODE_LOCAL, UNICODE_DOMAIN, PLAIN[1]]


def test_with_smtputf8_every_address_arrives_as_it_is(utf8_server):
    deliveries = deliver(utf8_server.smtp, [_email(a, i) for i, a in enumerate(BATCH)])
    assert [d.outcome for d in deliveries] == [Outcome.SENT] * 4
    handler = utf8_server.handler
    for address in (UNICODE_LOCAL, UNICODE_DOMAIN):
        arrival = handler.to(address)
        assert "SMTPUTF8" in arrival.mail_options
        assert arrival.message["To"] == address
        assert f"To: {address}".encode() in arrival.raw  # UTF-8 as it is, not RFC 2047
        assert arrival.message["Subject"] == "Grüße"
    plain = handler.to(PLAIN[0])
    assert plain.mail_options == [] and plain.message["To"] == PLAIN[0]


def test_without_smtputf8_a_unicode_local_part_is_rejected_alone_and_a_unicode_domain_goes_as_idna(
    ascii_server,
):
    deliveries = deliver(ascii_server.smtp, [_email(a, i) for i, a in enumerate(BATCH)])
    assert [d.outcome for d in deliveries] == [
        Outcome.SENT,
        Outcome.REJECTED,
        Outcome.SENT,
        Outcome.SENT,
    ]
    assert deliveries[1].response == (
        "the server does not offer SMTPUTF8, which the address 'jörg@example.com' needs "
        "(its local part is not ASCII)"
    )
    handler = ascii_server.handler
    assert sorted(r for a in handler.arrivals for r in a.rcpt_tos) == sorted([*PLAIN, IDNA_DOMAIN])
    idna = handler.to(IDNA_DOMAIN)
    assert idna.message["To"] == IDNA_DOMAIN and idna.mail_options == []
    assert idna.raw.isascii()
    assert idna.message["Subject"] == "Grüße"  # RFC 2047, decoded by the parser


def test_a_message_that_cannot_be_built_ends_alone_and_the_batch_goes_on(ascii_server):
    emails = [
        _email(PLAIN[0], 0),
        _email("eve@example.com\r\nRCPT TO:<x@evil.example>", 1),  # header injection
        _email("x@-bad-.例え", 2),  # no IDNA form
        _email(PLAIN[1], 3),
    ]
    deliveries = deliver(ascii_server.smtp, emails)
    assert [d.outcome for d in deliveries] == [
        Outcome.SENT,
        Outcome.REJECTED,
        Outcome.REJECTED,
        Outcome.SENT,
    ]
    assert "message could not be built" in deliveries[1].response
    assert "has no ASCII (IDNA) form" in deliveries[2].response
    assert sorted(r for a in ascii_server.handler.arrivals for r in a.rcpt_tos) == PLAIN


def test_the_local_sink_takes_smtputf8_addresses(tmp_path):
    port = free_port()
    with SmtpSink(tmp_path / "maildir", port=port) as sink:
        deliveries = deliver(
            SmtpServer("127.0.0.1", port), [_email(UNICODE_LOCAL), _email(PLAIN[0], 1)]
        )
        assert [d.outcome for d in deliveries] == [Outcome.SENT, Outcome.SENT]
        assert len(sink.messages()) == 2


def test_a_recipient_the_server_cannot_take_ends_only_its_enrollment(
    database, ascii_server, tmp_path
):
    from engine.sending.scheduler import send_due  # here: the messenger tests need no scheduler

    tenant = seed_tenant(database, "acme", NOW, tmp_path)
    with tenant_transaction(database.app, tenant.tenant_id) as conn:
        conn.execute(  # as if a CSV had brought it in
            sa.text("update app.contacts set email = :email where email = 'acme1@example.com'"),
            {"email": UNICODE_LOCAL},
        )
    report = send_due(database.app, ascii_server.smtp, NOW)
    assert (report.sent, report.failed) == (2, 1)
    assert any(UNICODE_LOCAL in e and "does not offer SMTPUTF8" in e for e in report.errors)
    with tenant_transaction(database.app, tenant.tenant_id) as conn:
        rows = conn.execute(
            sa.text(
                "select c.email, cc.status, cc.exit_reason, m.status as message, m.last_error "
                "from app.campaign_contacts cc join app.contacts c on c.id = cc.contact_id "
                "join app.sent_emails m on m.campaign_contact_id = cc.id order by c.email"
            )
        ).all()
    by_email = {r.email: r for r in rows}
    bad = by_email.pop(UNICODE_LOCAL)
    assert (bad.status, bad.exit_reason, bad.message) == ("exited", "message rejected", "failed")
    assert "does not offer SMTPUTF8" in bad.last_error
    assert {(r.status, r.message) for r in by_email.values()} == {("completed", "sent")}


# The courier: pooled sending against a real server that fails on demand (tests/smtp_faults.py).


def _jobs(server: SmtpServer, recipients: list[str], first: int = 0, **callbacks) -> list[SendJob]:
    return [SendJob(server, _email(r, first + i), **callbacks) for i, r in enumerate(recipients)]


@pytest.mark.parametrize(
    ("recipient", "outcome", "code"),
    [
        ("ann@example.com", Outcome.SENT, 250),
        ("r421-ann@example.com", Outcome.RETRY, 421),
        ("r451-ann@example.com", Outcome.RETRY, 451),
        ("r550-ann@example.com", Outcome.BOUNCED, 550),
        ("d554-ann@example.com", Outcome.REJECTED, 554),
        ("drop-after-data-ann@example.com", Outcome.UNKNOWN, None),
    ],
)
def test_a_real_servers_answer_decides_the_outcome(smtp_faults, recipient, outcome, code):
    server = smtp_faults.start()
    with Courier() as courier:
        [delivery] = courier.send(_jobs(server.smtp, [recipient]))
    assert (delivery.outcome, delivery.code) == (outcome, code)


def test_one_batch_goes_on_past_every_kind_of_fault(smtp_faults):
    server = smtp_faults.start()
    recipients = [
        "r421-a@example.com",
        "r451-b@example.com",
        "r550-c@example.com",
        "d554-d@example.com",
        "drop-after-data-e@example.com",
        "f@example.com",
    ]
    with Courier(CourierConfig(concurrency=1, per_server=1)) as courier:
        deliveries = courier.send(_jobs(server.smtp, recipients))
    assert [d.outcome for d in deliveries] == [
        Outcome.RETRY,
        Outcome.RETRY,
        Outcome.BOUNCED,
        Outcome.REJECTED,
        Outcome.UNKNOWN,
        Outcome.SENT,
    ]
    # The message whose connection dropped after DATA did arrive: "unknown" is the truth.
    assert server.recipients() == ["drop-after-data-e@example.com", "f@example.com"]


def test_connections_are_reused_across_batches_and_quit_at_the_end(smtp_faults):
    server = smtp_faults.start()
    with Courier(CourierConfig(concurrency=10, per_server=2)) as courier:
        first = courier.send(_jobs(server.smtp, [f"a{i}@example.com" for i in range(6)]))
        assert server.connections == 2
        second = courier.send(_jobs(server.smtp, [f"b{i}@example.com" for i in range(6)], 6))
        assert server.connections == 2  # the same two sessions carried batch 2
    assert [d.outcome for d in first + second] == [Outcome.SENT] * 12
    assert len(server.arrivals) == 12
    assert server.quits == 2
    assert server.rsets == 0  # a healthy connection is not reset between messages


@pytest.mark.parametrize("fault", ["r550-", "r451-", "r421-", "d554-", "drop-after-data-"])
def test_a_connection_that_returned_an_error_is_never_reused(smtp_faults, fault):
    server = smtp_faults.start()
    recipients = ["a@example.com", f"{fault}b@example.com", "c@example.com"]
    with Courier(CourierConfig(concurrency=1, per_server=1)) as courier:
        deliveries = courier.send(_jobs(server.smtp, recipients))
    assert deliveries[0].outcome is deliveries[2].outcome is Outcome.SENT
    assert server.connections == 2
    [first, last] = [a for a in server.arrivals if a.rcpt_tos[0] != f"{fault}b@example.com"]
    assert (first.connection, last.connection) == (1, 2)


def test_a_connection_is_replaced_after_its_message_limit(smtp_faults):
    server = smtp_faults.start()
    config = CourierConfig(concurrency=1, per_server=1, messages_per_connection=3)
    with Courier(config) as courier:
        courier.send(_jobs(server.smtp, [f"a{i}@example.com" for i in range(7)]))
    assert [a.connection for a in server.arrivals] == [1, 1, 1, 2, 2, 2, 3]
    assert server.quits == 3


def test_connections_per_server_and_conversations_overall_are_bounded(smtp_faults):
    one, two = smtp_faults.start(data_delay=0.1), smtp_faults.start(data_delay=0.1)
    jobs = [
        job
        for i in range(8)
        for job in (
            SendJob(one.smtp, _email(f"one{i}@example.com", i)),
            SendJob(two.smtp, _email(f"two{i}@example.com", 100 + i)),
        )
    ]
    with Courier(CourierConfig(concurrency=3, per_server=2)) as courier:
        deliveries = courier.send(jobs)
    assert [d.outcome for d in deliveries] == [Outcome.SENT] * 16
    assert one.max_open <= 2 and two.max_open <= 2
    assert smtp_faults.max_in_data == 3  # the overall bound, and it was used


def test_each_server_gets_its_own_connections_up_to_the_bound(smtp_faults):
    one, two = smtp_faults.start(data_delay=0.1), smtp_faults.start(data_delay=0.1)
    jobs = _jobs(one.smtp, [f"one{i}@example.com" for i in range(6)]) + _jobs(
        two.smtp, [f"two{i}@example.com" for i in range(6)], 6
    )
    with Courier(CourierConfig(concurrency=10, per_server=2)) as courier:
        courier.send(jobs)
    assert (one.max_open, two.max_open) == (2, 2)
    assert smtp_faults.max_in_data == 4


def test_a_tarpit_costs_one_timeout_and_its_later_messages_none(smtp_faults):
    tarpit, healthy = smtp_faults.start(tarpit=True), smtp_faults.start()
    timeout = 0.5
    jobs = _jobs(tarpit.smtp, [f"t{i}@example.com" for i in range(5)]) + _jobs(
        healthy.smtp, ["h0@example.com", "h1@example.com"], 5
    )
    with Courier(CourierConfig(timeout=timeout, per_server=3)) as courier:
        started = time.monotonic()
        deliveries = courier.send(jobs)
        first_batch = time.monotonic() - started
        assert [d.outcome for d in deliveries] == [Outcome.SERVER_DOWN] * 5 + [Outcome.SENT] * 2
        assert "timed out" in deliveries[0].response.lower()
        assert timeout <= first_batch < 2 * timeout  # one timeout, not one per message
        assert tarpit.connections == 1

        started = time.monotonic()
        [later] = courier.send(_jobs(tarpit.smtp, ["t9@example.com"], 9))
        assert later.outcome is Outcome.SERVER_DOWN
        assert time.monotonic() - started < timeout / 2  # no wait at all
        assert tarpit.connections == 1
        assert set(courier.down) == {tarpit.smtp}


def test_a_refused_connection_marks_only_that_server_down(smtp_faults):
    refused, healthy = smtp_faults.refused(), smtp_faults.start()
    before_calls: list[str] = []
    after_calls: list[Outcome] = []
    jobs = _jobs(
        refused,
        ["a@example.com", "b@example.com"],
        before=lambda: before_calls.append("before"),
        after=lambda d: after_calls.append(d.outcome),
    ) + _jobs(healthy.smtp, ["c@example.com"], 2)
    with Courier() as courier:
        deliveries = courier.send(jobs)
    assert [d.outcome for d in deliveries] == [Outcome.SERVER_DOWN] * 2 + [Outcome.SENT]
    # Nothing was tried for them: `before` never ran, `after` heard why.
    assert before_calls == [] and after_calls == [Outcome.SERVER_DOWN] * 2


def test_a_server_that_stops_answering_mid_conversation_is_down_for_the_rest(smtp_faults):
    server = smtp_faults.start()
    recipients = ["hang-a@example.com", "b@example.com", "c@example.com"]
    with Courier(CourierConfig(timeout=0.5, concurrency=1, per_server=1)) as courier:
        started = time.monotonic()
        deliveries = courier.send(_jobs(server.smtp, recipients))
        elapsed = time.monotonic() - started
    # The message that was tried spends an attempt; the ones never tried do not.
    assert [d.outcome for d in deliveries] == [
        Outcome.RETRY,
        Outcome.SERVER_DOWN,
        Outcome.SERVER_DOWN,
    ]
    assert "during RCPT" in deliveries[1].response
    assert elapsed < 1.0 and server.arrivals == []


def test_before_returning_false_sends_nothing_and_the_connection_is_kept(smtp_faults):
    server = smtp_faults.start()
    after_calls: list[str] = []
    jobs = [
        SendJob(
            server.smtp,
            _email(r, i),
            before=lambda r=r: not r.startswith("paused"),
            after=lambda d, r=r: after_calls.append(r),
        )
        for i, r in enumerate(["a@example.com", "paused@example.com", "c@example.com"])
    ]
    with Courier(CourierConfig(concurrency=1, per_server=1)) as courier:
        deliveries = courier.send(jobs)
    assert deliveries[1] is None and deliveries[0].ok and deliveries[2].ok
    assert server.recipients() == ["a@example.com", "c@example.com"]
    assert sorted(after_calls) == ["a@example.com", "c@example.com"]
    assert server.connections == 1


def test_before_runs_just_before_the_conversation_and_after_right_after_in_threads(
    smtp_faults,
):
    server = smtp_faults.start()
    seen: list[tuple[str, str, bool, str]] = []

    def before(recipient: str) -> bool:
        arrived = recipient in server.recipients()
        seen.append(("before", recipient, arrived, threading.current_thread().name))
        return True

    def after(recipient: str, delivery: Delivery) -> None:
        arrived = recipient in server.recipients()
        seen.append(("after", recipient, arrived, threading.current_thread().name))

    recipients = [f"a{i}@example.com" for i in range(4)]
    jobs = [
        SendJob(
            server.smtp,
            _email(r, i),
            before=lambda r=r: before(r),
            after=lambda d, r=r: after(r, d),
        )
        for i, r in enumerate(recipients)
    ]
    with Courier(CourierConfig(concurrency=2)) as courier:
        courier.send(jobs)
    assert sorted((what, r, arrived) for what, r, arrived, _ in seen) == sorted(
        [("before", r, False) for r in recipients] + [("after", r, True) for r in recipients]
    )
    assert all(thread != threading.main_thread().name for *_, thread in seen)


def test_callback_errors_end_only_their_job_and_are_raised_after_the_batch(smtp_faults):
    server = smtp_faults.start()

    def before(recipient: str) -> None:
        if recipient.startswith("bad-before"):
            raise RuntimeError("the database went away for this one")

    def after(recipient: str) -> None:
        if recipient.startswith("bad-after"):
            raise RuntimeError("could not record")

    recipients = ["a@example.com", "bad-before@example.com", "bad-after@example.com", "d@x.com"]
    jobs = [
        SendJob(
            server.smtp,
            _email(r, i),
            before=lambda r=r: before(r),
            after=lambda d, r=r: after(r),
        )
        for i, r in enumerate(recipients)
    ]
    with Courier(CourierConfig(concurrency=1, per_server=1)) as courier:
        with pytest.raises(CallbackError) as raised:
            courier.send(jobs)
    error = raised.value
    assert [str(e) for e in error.exceptions] == [
        "the database went away for this one",
        "could not record",
    ]
    assert error.exceptions[0].__notes__ == ["in the before callback of message <m1@acme.example>"]
    assert error.exceptions[1].__notes__ == ["in the after callback of message <m2@acme.example>"]
    assert error.deliveries[1] is None  # never sent: `before` did not say yes
    assert [d.outcome for d in error.deliveries if d] == [Outcome.SENT] * 3
    assert server.recipients() == ["a@example.com", "bad-after@example.com", "d@x.com"]


def test_an_idle_connection_the_server_closed_is_replaced_without_costing_a_message(smtp_faults):
    server = smtp_faults.start()
    with Courier(CourierConfig(concurrency=1, per_server=1)) as courier:
        courier.send(_jobs(server.smtp, ["a@example.com"]))
        server.hang_up()  # e.g. the server's idle timeout between two batches
        [delivery] = courier.send(_jobs(server.smtp, ["b@example.com"], 1))
    assert delivery.outcome is Outcome.SENT
    assert server.recipients() == ["a@example.com", "b@example.com"]
    assert server.connections == 2


def test_a_login_in_clear_text_to_another_host_is_never_attempted_by_the_courier():
    server = SmtpServer("smtp.example.com", 25, "none", "sales", "secret")
    with Courier() as courier:
        [delivery] = courier.send([SendJob(server, _email("a@example.com"))])
    assert delivery.outcome is Outcome.RETRY
    assert "would send the password in clear text" in delivery.response


def test_send_outside_the_with_block_says_how_to_use_it():
    with pytest.raises(RuntimeError, match="with Courier"):
        Courier().send([])


def test_a_bad_configuration_is_refused_with_its_values():
    with pytest.raises(ValueError, match="must be >= 1, got 0"):
        CourierConfig(concurrency=0)
    with pytest.raises(ValueError, match="timeout must be positive"):
        CourierConfig(timeout=0)


# The plain-message writer must write exactly what the email package writes.

EST = timezone(timedelta(hours=-5))

_PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
_TRICKY = st.sampled_from(["=?", "?=", "..", ".", " ", "  ", "\t", "\r", "\n", "é", '"', "(", "@"])
_ANY_TEXT = st.lists(st.one_of(_PRINTABLE, _TRICKY), max_size=90).map("".join)
_WORD = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=12)
_WORDS = st.lists(_WORD, min_size=1, max_size=9).map(" ".join)
# Mostly what the plain writer takes, so the comparison runs often; sometimes anything.
_TEXT = st.one_of(_WORDS, _WORDS, _ANY_TEXT)
_ATOM = st.text("abcXYZ019!#$%&'*+/=?^_`{|}~-", min_size=1, max_size=8)
_ADDRESS = st.one_of(
    st.builds(lambda a, b, d: f"{a}.{b}@{d}.example", _ATOM, _ATOM, st.sampled_from(["x", "a-b"])),
    st.builds(lambda a: f"{a}@example.com", _ATOM),
    st.builds(lambda t: f"{t}@example.com", _ANY_TEXT),
)
_NAME = st.one_of(
    st.none(), st.from_regex(r"[A-Za-z0-9]{1,8}( [A-Za-z0-9]{1,8}){0,3}", fullmatch=True), _ANY_TEXT
)
_LINE = st.one_of(_WORDS, st.just(""), st.just("."), _ANY_TEXT)


@given(
    sender=_ADDRESS,
    recipient=_ADDRESS,
    name=_NAME,
    subject=_TEXT,
    body=st.lists(_LINE, max_size=6).map("\n".join),
    message_id=st.one_of(_ADDRESS, _ANY_TEXT),
    unsubscribe=st.one_of(st.none(), _TEXT),
    reply_to=st.one_of(st.none(), _ADDRESS),
    when=st.one_of(
        st.datetimes(min_value=datetime(1900, 1, 1), timezones=st.sampled_from([UTC, EST])),
        st.datetimes(timezones=st.sampled_from([UTC, EST])),
    ),
)
@settings(max_examples=400, deadline=None)
def test_a_plain_message_is_written_byte_for_byte_as_the_email_package_writes_it(
    sender, recipient, name, subject, body, message_id, unsubscribe, reply_to, when
):
    headers = {}
    if unsubscribe is not None:
        headers["List-Unsubscribe"] = unsubscribe
    if reply_to is not None:
        headers["Reply-To"] = reply_to
    email = OutgoingEmail(message_id, sender, name, recipient, subject, body, None, when, headers)
    written = plain_bytes(email, sender, recipient)
    event("written directly" if written is not None else "left to the email package")
    if written is not None:
        assert written == email.to_message(sender, recipient).as_bytes()


def test_the_engines_usual_message_takes_the_plain_writer():
    email = _email(
        "lead1@customers.example",
        subject="A question for Acme, Lead",
        body_text="Hi Lead,\n\nhow does Acme send its email today?\n\nPat\n",
        headers={"List-Unsubscribe": "<mailto:sales@acme.example?subject=unsubscribe>"},
    )
    written = plain_bytes(email, email.sender_email, email.recipient)
    assert written == email.to_message().as_bytes()
