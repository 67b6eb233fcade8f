"""What an inbound message is, from the message alone.

In this order, the first that fits:

* **complaint**: an ARF feedback report (RFC 5965: `multipart/report;
  report-type=feedback-report`); the original recipient and Message-ID come from its report
  and its attached original.
* **bounce**: a delivery status notification (RFC 3464) or one of the non-standard formats of
  common MTAs (Postfix, Exim, qmail, Exchange, Yahoo, AOL, ...), as flufl.bounce detects them
  in a message that looks like one (a null envelope sender, a mailer daemon or postmaster, a
  report, X-Failed-Recipients, or a bounce's subject in one of several languages);
  *hard* when it names a permanent failure (5.x.x), else *soft*. The original Message-ID comes
  from the attached original message or headers, where there is one.
* **auto_reply**: `Auto-Submitted` other than `no` (RFC 3834), `X-Autoreply`, `X-Autorespond`,
  `Precedence: auto_reply|bulk|junk`, `X-Auto-Response-Suppress`, or a subject that says "out of
  office" in one of `AUTO_REPLY_SUBJECTS`' languages.
* **unsubscribe**: a new message (no "Re:", no references) whose subject (or, with an empty
  subject, the first line of its text) is "unsubscribe" or a translation of it, as the mailto
  link of List-Unsubscribe sends it.
* **reply**: anything else a person wrote.

The message a reply answers is named by `In-Reply-To` and `References` (newest first).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from email.header import decode_header, make_header
from email.message import Message
from email.utils import getaddresses
from enum import StrEnum

from flufl.bounce import all_failures


class Kind(StrEnum):
    REPLY = "reply"
    AUTO_REPLY = "auto_reply"
    BOUNCE = "bounce"
    COMPLAINT = "complaint"
    UNSUBSCRIBE = "unsubscribe"


#: Subjects of automatic answers, in common languages (matched anywhere, ignoring case).
AUTO_REPLY_SUBJECTS = (
    r"out of (the )?office",
    r"auto(matic)?[- ]?(reply|response|antwort|risposta|respuesta|réponse)",
    r"automatische antwort",
    r"abwesenheit",
    r"(absence|absent) du bureau",
    r"réponse automatique",
    r"fuera de la oficina",
    r"respuesta automática",
    r"fuori ufficio",
    r"risposta automatica",
    r"afwezig",
    r"automatisch antwoord",
    r"ausente",
    r"resposta automática",
    r"frånvaro",
    r"poza biurem",
    r"vacation",
    r"on leave",
)
_AUTO_SUBJECT = re.compile("|".join(AUTO_REPLY_SUBJECTS), re.IGNORECASE)
_UNSUBSCRIBE = re.compile(
    r"^\s*(unsubscribe|abmelden|désabonner|desinscribir|darse de baja|cancella iscrizione|"
    r"uitschrijven|remove me|stop)\s*[.!]?\s*$",
    re.IGNORECASE,
)
_MESSAGE_ID = re.compile(r"<([^<>\s]+)>")
#: Who sends bounces, and what they call them: a message showing none of these (nor a null
#: envelope sender, a report, X-Failed-Recipients) is not handed to the bounce detectors, which
#: cost ten times the parse of a message.
_DAEMON = re.compile(r"^(mailer-?daemon|mail-?daemon|postmaster|mail\.delivery|bounces?)\b", re.I)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|undelivered|delivery (status|failure|notification|has failed)|failure notice|"
    r"returned mail|mail delivery failed|non[- ]?deliver|not delivered|could not be delivered|"
    r"unzustellbar|nicht zustellbar|non remis|no entregado|non recapitato|onbestelbaar",
    re.IGNORECASE,
)
_AUTO_PRECEDENCE = {"auto_reply", "bulk", "junk"}
_REPLY_PREFIX = re.compile(r"^\s*(re|aw|sv|antw|wg|fw|fwd|tr)\s*:", re.IGNORECASE)


@dataclass(frozen=True)
class Classified:
    kind: Kind
    #: Message-IDs (no angle brackets) of the messages it answers or reports, best first.
    refers_to: tuple[str, ...] = ()
    #: The address it comes from (a reply's author); for a bounce or complaint, the addresses
    #: that failed or complained (the original recipients).
    sender: str = ""
    addresses: tuple[str, ...] = ()
    hard: bool = False  # a bounce: permanent
    detail: str = ""
    headers: dict[str, str] = field(default_factory=dict)


def clean(text: str) -> str:
    """Header text as the database can store it: undecodable bytes (8-bit headers arrive as
    surrogates) as U+FFFD, no NUL."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace").replace("\x00", "")


def _ids(value: str | None) -> list[str]:
    return [clean(i) for i in _MESSAGE_ID.findall(value or "")]


class _Headers:
    """The message's headers as written (the first of each name), read without the email
    package parsing each one into an object, which cost more than the rest of classifying."""

    def __init__(self, msg: Message) -> None:
        self._raw: dict[str, str] = {}
        for name, value in msg.raw_items():
            self._raw.setdefault(name.lower(), clean(str(value)))

    def get(self, name: str) -> str | None:
        return self._raw.get(name.lower())

    def address(self, name: str) -> str:
        """The address of a From-like header, taken from the header as written: an encoded
        word is a display name, never an address (``=?utf-8?q?=3Cvictim@x?= <me@y>`` is me@y)."""
        found = getaddresses([self._raw.get(name.lower()) or ""])
        return found[0][1].lower() if found else ""

    def text(self, name: str) -> str:
        """A header's text, RFC 2047 encoded words decoded."""
        value = self._raw.get(name.lower()) or ""
        if "=?" in value:
            with contextlib.suppress(Exception):  # malformed encoded words: read as written
                value = str(make_header(decode_header(value)))
        return " ".join(value.split())


def _referenced(headers: _Headers) -> list[str]:
    """In-Reply-To, then References from the newest."""
    ids = _ids(headers.get("In-Reply-To"))
    ids += [i for i in reversed(_ids(headers.get("References"))) if i not in ids]
    return ids


def _original_ids(msg: Message, headers: _Headers) -> list[str]:
    """Message-IDs of the original a report or bounce carries (message/rfc822 or
    text/rfc822-headers part), else those its own headers reference."""
    found: list[str] = []
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype in ("message/rfc822", "message/global"):
            payload = part.get_payload()
            inner = payload[0] if isinstance(payload, list) and payload else None
            if isinstance(inner, Message):
                found += _ids(inner.get("Message-ID"))
        elif ctype in ("text/rfc822-headers", "text/global-headers"):
            text = part.get_payload(decode=True) or b""
            m = re.search(rb"^Message-ID:\s*(<[^>\r\n]+>)", text, re.IGNORECASE | re.MULTILINE)
            if m:
                found += _ids(m.group(1).decode("utf-8", "replace"))
    if not found and msg.get_content_type() == "text/plain":
        # Non-standard bounces quote the original inline.
        body = _text(msg)
        m = re.search(r"^Message-ID:\s*(<[^>\s]+>)", body, re.IGNORECASE | re.MULTILINE)
        if m:
            found += _ids(m.group(1))
    return [*found, *(i for i in _referenced(headers) if i not in found)]


def _text(msg: Message) -> str:
    """The first text/plain part, decoded (whatever the policy the message was parsed with)."""
    for part in msg.walk():
        if part.get_content_type() == "text/plain" and not part.is_multipart():
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                charset = part.get_content_charset() or "utf-8"
                try:
                    return payload.decode(charset, "replace")
                except LookupError:  # an unknown charset
                    return payload.decode("utf-8", "replace")
    return ""


def _is_report(headers: _Headers) -> bool:
    return (headers.get("Content-Type") or "").strip().lower().startswith("multipart/report")


def _feedback_report(msg: Message, headers: _Headers) -> Message | None:
    if not _is_report(headers):
        return None
    if (msg.get_param("report-type") or "").lower() != "feedback-report":
        return None
    for part in msg.walk():
        if part.get_content_type() == "message/feedback-report":
            return part
    return None


def _report_fields(part: Message) -> dict[str, str]:
    payload = part.get_payload()
    if isinstance(payload, list):  # the email package parses it as a list of header blocks
        fields: dict[str, str] = {}
        for block in payload:
            if isinstance(block, Message):
                fields.update({k.lower(): str(v) for k, v in block.items()})
        return fields
    text = part.get_payload(decode=True) or b""
    fields = {}
    for line in text.decode("utf-8", "replace").splitlines():
        name, sep, value = line.partition(":")
        if sep:
            fields.setdefault(name.strip().lower(), value.strip())
    return fields


def _is_auto_reply(headers: _Headers) -> str | None:
    auto = (headers.get("Auto-Submitted") or "").strip().lower()
    if auto and auto != "no":
        return f"Auto-Submitted: {auto}"
    for name in ("X-Autoreply", "X-Autorespond", "X-Auto-Response-Suppress"):
        if headers.get(name) is not None:
            return name
    precedence = (headers.get("Precedence") or "").strip().lower()
    if precedence in _AUTO_PRECEDENCE:
        return f"Precedence: {precedence}"
    subject = headers.text("Subject")
    # "Re: Vacation rentals for your team" quotes the campaign's own subject: a person's reply.
    if not _REPLY_PREFIX.match(subject) and _AUTO_SUBJECT.search(subject):
        return f"subject {subject[:80]!r}"
    return None


def _may_be_bounce(headers: _Headers, sender: str) -> bool:
    envelope = headers.get("X-MailFrom")  # the sink's record of the envelope sender
    return (
        (headers.get("Return-Path") or "").strip() == "<>"
        or (envelope is not None and not envelope.strip())
        or bool(_DAEMON.match(sender))
        or _is_report(headers)
        or headers.get("X-Failed-Recipients") is not None
        or bool(_BOUNCE_SUBJECT.search(headers.text("Subject")))
    )


def _decode(addresses: frozenset[bytes]) -> tuple[str, ...]:
    return tuple(sorted(a.decode("utf-8", "replace").lower() for a in addresses))


def classify(msg: Message) -> Classified:
    """What `msg` is (module docstring)."""
    headers = _Headers(msg)
    sender = headers.address("From")
    report = _feedback_report(msg, headers)
    if report is not None:
        fields = _report_fields(report)
        recipients = [a.lower() for _, a in getaddresses([fields.get("original-rcpt-to", "")]) if a]
        refers = _original_ids(msg, headers)
        return Classified(
            Kind.COMPLAINT,
            tuple(refers),
            sender,
            tuple(recipients),
            detail=f"feedback type {fields.get('feedback-type', 'unknown')}",
        )
    temporary, permanent = frozenset(), frozenset()
    if _may_be_bounce(headers, sender):
        # A detector tripping over a malformed message: not a bounce it knows.
        with contextlib.suppress(Exception):
            temporary, permanent = all_failures(msg)
    if temporary or permanent:
        hard = bool(permanent)
        return Classified(
            Kind.BOUNCE,
            tuple(_original_ids(msg, headers)),
            sender,
            _decode(permanent if hard else temporary),
            hard=hard,
            detail=("permanent" if hard else "temporary") + " failure",
        )
    auto = _is_auto_reply(headers)
    refers = tuple(_referenced(headers))
    if auto:
        return Classified(Kind.AUTO_REPLY, refers, sender, detail=auto)
    subject = headers.text("Subject")

    def first_line() -> str:
        return next((line for line in _text(msg).splitlines() if line.strip()), "")

    # The List-Unsubscribe mailto writes a new message: a reply ("Re: Stop", with its
    # references) that says stop is a person's answer, read as a reply.
    fresh = not refers and not _REPLY_PREFIX.match(subject)
    if fresh and (
        _UNSUBSCRIBE.match(subject) or (not subject and _UNSUBSCRIBE.match(first_line()))
    ):
        return Classified(Kind.UNSUBSCRIBE, refers, sender, detail="unsubscribe by email")
    return Classified(Kind.REPLY, refers, sender)
