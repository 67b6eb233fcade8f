"""The messenger seam: build RFC 5322 messages and deliver them over SMTP (aiosmtplib).

One connection per SMTP server per batch; a connection that returned an error is closed and
never reused. Every network wait has a timeout.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, formataddr
from enum import StrEnum

import aiosmtplib

from engine.senders import SmtpServer

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

    def to_message(self) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = formataddr((self.sender_name or "", self.sender_email))
        msg["To"] = self.recipient
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


async def _deliver(server: SmtpServer, emails: list[OutgoingEmail]) -> list[Delivery]:
    """Hand each message over in explicit phases, so a failure says what it means:
    before DATA nothing was delivered (retry); a refused RCPT is the address (bounce); a
    refused DATA is the message; a connection lost during DATA leaves it in doubt."""
    results: list[Delivery] = []
    client: aiosmtplib.SMTP | None = None
    for email in emails:
        try:
            payload = email.to_message().as_bytes()
        except (ValueError, TypeError) as exc:  # e.g. a header that cannot be encoded
            results.append(Delivery(Outcome.REJECTED, f"message could not be built: {exc}"))
            continue
        phase = "connect"
        try:
            if client is None:
                client = _client(server)
                await client.connect()
            phase = "mail"
            await client.mail(email.sender_email)
            phase = "rcpt"
            await client.rcpt(email.recipient)
            phase = "data"
            response = await client.data(payload)
            results.append(Delivery(Outcome.SENT, str(response.message), response.code))
        except aiosmtplib.SMTPResponseException as exc:
            results.append(Delivery(_classify(phase, exc.code), exc.message, exc.code))
            client = await _discard(client)
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            outcome = Outcome.UNKNOWN if phase == "data" else Outcome.RETRY
            results.append(Delivery(outcome, f"{exc.__class__.__name__}: {exc}"))
            client = await _discard(client)
    if client is not None:
        await _discard(client)
    return results


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
        except (TimeoutError, aiosmtplib.SMTPException, OSError):
            client.close()
    return None


def deliver(server: SmtpServer, emails: list[OutgoingEmail]) -> list[Delivery]:
    """Send `emails` over one connection to `server`; one Delivery per email, in order."""
    return asyncio.run(_deliver(server, emails))
