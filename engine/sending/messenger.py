"""The messenger seam: build RFC 5322 messages and deliver them over SMTP (aiosmtplib).

One connection per SMTP server per batch; a connection that returned an error is closed and
never reused. Every network wait has a timeout.

Internationalized addresses: when the server offers SMTPUTF8 (RFC 6531), a non-ASCII address
goes as it is, with the SMTPUTF8 MAIL option and the message serialized as UTF-8. When it does
not, a non-ASCII domain is written in ASCII (IDNA, `xn--`) in the envelope and the headers, and
an address whose local part is not ASCII cannot be sent: that one message is rejected with the
reason. Whatever goes wrong with one message ends that message only, never the batch.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from datetime import datetime
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime, formataddr
from enum import StrEnum

import aiosmtplib
import idna

from engine.senders import SmtpServer, cleartext_login_refusal

TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class OutgoingEmail:
    message_id: str  # without angle brackets
    sender_email: str
    sender_name: str | None
    recipient: str
    subject: str
    body_text: str
    body_html: str | None
    date: datetime
    headers: dict[str, str] = field(default_factory=dict)

    def to_message(self, sender: str | None = None, recipient: str | None = None) -> EmailMessage:
        """The message, with `sender`/`recipient` as written for the server (e.g. IDNA)."""
        msg = EmailMessage()
        msg["From"] = formataddr((self.sender_name or "", sender or self.sender_email))
        msg["To"] = recipient or self.recipient
        msg["Subject"] = self.subject
        msg["Date"] = format_datetime(self.date)
        msg["Message-ID"] = f"<{self.message_id}>"
        for name, value in self.headers.items():
            msg[name] = value
        msg.set_content(self.body_text)
        if self.body_html:
            msg.add_alternative(self.body_html, subtype="html")
        return msg


class Outcome(StrEnum):
    SENT = "sent"
    #: The server refused the recipient for good (RCPT 5xx): a hard bounce of the address.
    BOUNCED = "bounced"
    #: The message itself was refused for good (DATA 5xx), or could not be built.
    REJECTED = "rejected"
    #: Nothing was handed over (connection, TLS, login, MAIL, or a 4xx): safe to try again.
    RETRY = "retry"
    #: The connection failed while the message was being handed over: it may have arrived.
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Delivery:
    """The outcome of one message, with the server's reply (or the error) and its code."""

    outcome: Outcome
    response: str
    code: int | None = None

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.SENT


def _client(server: SmtpServer) -> aiosmtplib.SMTP:
    context = ssl.create_default_context()
    return aiosmtplib.SMTP(
        hostname=server.host,
        port=server.port,
        use_tls=server.security == "tls",
        start_tls=server.security == "starttls",
        username=server.username,
        password=server.password,
        timeout=TIMEOUT_SECONDS,
        tls_context=context,
    )


class Unsendable(ValueError):
    """This message cannot be handed to this server at all (its address, its headers)."""


def address_for(address: str, smtputf8: bool) -> str:
    """`address` as the server can take it: as is with SMTPUTF8, else with an IDNA domain.

    Raises `Unsendable` when the local part is not ASCII and the server has no SMTPUTF8, or
    the domain has no ASCII form.
    """
    if address.isascii() or smtputf8:
        return address
    local, at, domain = address.rpartition("@")
    if not at or not local:
        raise Unsendable(f"{address!r} is not an email address")
    if not local.isascii():
        raise Unsendable(
            f"the server does not offer SMTPUTF8, which the address {address!r} needs "
            "(its local part is not ASCII)"
        )
    try:
        ascii_domain = idna.encode(domain, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError) as exc:
        raise Unsendable(f"the domain of {address!r} has no ASCII (IDNA) form: {exc}") from None
    return f"{local}@{ascii_domain}"


@dataclass(frozen=True)
class _Envelope:
    sender: str
    recipient: str
    payload: bytes
    smtputf8: bool  # MAIL with the SMTPUTF8 option, addresses in UTF-8


def _envelope(email: OutgoingEmail, server_smtputf8: bool) -> _Envelope:
    """The envelope and serialized message for one email; raises for one that cannot go."""
    sender = address_for(email.sender_email, server_smtputf8)
    recipient = address_for(email.recipient, server_smtputf8)
    utf8 = not (sender.isascii() and recipient.isascii())
    try:
        msg = email.to_message(sender, recipient)
        payload = msg.as_bytes(policy=policy.SMTPUTF8 if utf8 else msg.policy)
    except Exception as exc:  # e.g. a header that cannot be encoded; one message only
        raise Unsendable(f"message could not be built: {exc.__class__.__name__}: {exc}") from exc
    return _Envelope(sender, recipient, payload, utf8)


async def _greet(client: aiosmtplib.SMTP) -> None:
    """EHLO (or HELO) once, so the server's extensions are known before the first MAIL."""
    if client.is_ehlo_or_helo_needed:
        try:
            await client.ehlo()
        except aiosmtplib.SMTPHeloError:
            await client.helo()


async def _deliver(server: SmtpServer, emails: list[OutgoingEmail]) -> list[Delivery]:
    """Hand each message over in explicit phases, so a failure says what it means:
    before DATA nothing was delivered (retry); a refused RCPT is the address (bounce); a
    refused DATA is the message; a connection lost during DATA leaves it in doubt. A message
    that cannot be written for this server (its address, its headers) is rejected alone."""
    refusal = cleartext_login_refusal(
        server.host, server.security, server.username is not None or server.password is not None
    )
    if refusal:  # defence in depth: senders.smtp_server_for refuses these already
        return [Delivery(Outcome.RETRY, f"not connecting: {refusal}") for _ in emails]
    results: list[Delivery] = []
    client: aiosmtplib.SMTP | None = None
    for email in emails:
        phase = "connect"
        try:
            if client is None:
                client = _client(server)
                await client.connect()
                await _greet(client)
            phase = "build"
            envelope = _envelope(email, client.supports_extension("smtputf8"))
            encoding = "utf-8" if envelope.smtputf8 else "ascii"
            phase = "mail"
            await client.mail(
                envelope.sender,
                options=["SMTPUTF8"] if envelope.smtputf8 else [],
                encoding=encoding,
            )
            phase = "rcpt"
            await client.rcpt(envelope.recipient, encoding=encoding)
            phase = "data"
            response = await client.data(envelope.payload)
            results.append(Delivery(Outcome.SENT, str(response.message), response.code))
        except Unsendable as exc:  # nothing went over the wire: the connection is fine
            results.append(Delivery(Outcome.REJECTED, str(exc)))
        except aiosmtplib.SMTPResponseException as exc:
            results.append(Delivery(_classify(phase, exc.code), exc.message, exc.code))
            client = await _discard(client)
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            outcome = Outcome.UNKNOWN if phase == "data" else Outcome.RETRY
            results.append(Delivery(outcome, f"{exc.__class__.__name__}: {exc}"))
            client = await _discard(client)
        except Exception as exc:  # anything else ends this message only
            results.append(Delivery(_unexpected(phase), f"{exc.__class__.__name__}: {exc}"))
            client = await _discard(client)  # it may be halfway through a command
    if client is not None:
        await _discard(client)
    return results


def _unexpected(phase: str) -> Outcome:
    """An error that is not the server's answer: in MAIL or RCPT it is this message's address
    (it would fail again); before that nothing was tried; during DATA it may have arrived."""
    if phase in ("build", "mail", "rcpt"):
        return Outcome.REJECTED
    if phase == "data":
        return Outcome.UNKNOWN
    return Outcome.RETRY


def _classify(phase: str, code: int) -> Outcome:
    if code < 500:
        return Outcome.RETRY
    if phase == "rcpt":
        return Outcome.BOUNCED
    if phase == "data":
        return Outcome.REJECTED
    # 5xx at connect, login or MAIL FROM is the sender's problem, not the recipient's:
    # retried (and reported) until the attempts run out, never a bounce.
    return Outcome.RETRY


async def _discard(client: aiosmtplib.SMTP | None) -> None:
    if client is not None and client.is_connected:
        try:
            await asyncio.wait_for(client.quit(), TIMEOUT_SECONDS)
        except Exception:  # closing is all that is left to do
            client.close()
    elif client is not None:
        client.close()
    return None


def deliver(server: SmtpServer, emails: list[OutgoingEmail]) -> list[Delivery]:
    """Send `emails` over one connection to `server`; one Delivery per email, in order."""
    return asyncio.run(_deliver(server, emails))
