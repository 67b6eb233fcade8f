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


@dataclass(frozen=True)
class Delivery:
    """The outcome of one message: `ok`, or an SMTP code (None: no answer) and the reason."""

    ok: bool
    response: str
    code: int | None = None

    @property
    def permanent(self) -> bool:
        """5xx: the server refused the recipient or message for good (a hard bounce)."""
        return self.code is not None and 500 <= self.code < 600


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
    results: list[Delivery] = []
    client: aiosmtplib.SMTP | None = None
    for email in emails:
        try:
            if client is None:
                client = _client(server)
                await client.connect()
            errors, response = await client.send_message(email.to_message())
            if errors:  # recipient refused while others were accepted: only one recipient here
                code, text = next(iter(errors.values()))
                results.append(Delivery(False, text, code))
            else:
                results.append(Delivery(True, response))
        except aiosmtplib.SMTPRecipientsRefused as exc:  # our only recipient was refused
            refused = exc.recipients[0]
            results.append(Delivery(False, refused.message, refused.code))
            client = await _discard(client)
        except aiosmtplib.SMTPResponseException as exc:
            results.append(Delivery(False, exc.message, exc.code))
            client = await _discard(client)
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            results.append(Delivery(False, f"{exc.__class__.__name__}: {exc}"))
            client = await _discard(client)
    if client is not None:
        await _discard(client)
    return results


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
