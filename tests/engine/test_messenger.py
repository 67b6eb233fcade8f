"""The messenger and internationalized addresses, against real aiosmtpd servers with and
without SMTPUTF8: one address a server cannot take ends only its own message."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from email import message_from_bytes, policy

import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller

from engine.db import tenant_transaction
from engine.senders import SmtpServer
from engine.sending.messenger import Outcome, OutgoingEmail, deliver
from engine.sending.scheduler import send_due
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
