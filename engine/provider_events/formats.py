"""What one webhook record of an email service provider says, in our terms.

Each provider's record becomes a `ProviderEvent` (or None, for a kind we do not record), or
raises `RecordError` saying what is missing or wrong. The kinds recorded are `delivered`,
`open`, `click`, `bounce` (hard or soft), `complaint` and `unsubscribe`.

A record names its message in one or both of two ways:

* our **Message-ID** (the header we wrote), which `sent_emails.message_id` holds;
* the provider's **own id** for the message, matched through the `provider_messages` learnt
  from records that carry both (a file's or an earlier import's).

* `ses`: an event (`eventType`) or a notification (`notificationType`), bare or in its SNS
  envelope; ours in `mail.headers` or `mail.commonHeaders.messageId`, theirs `mail.messageId`;
* `sendgrid`: one Event Webhook event; ours in `smtp-id` (processed, delivered, bounce, ...),
  theirs `sg_message_id` up to its first `.` (all events, opens and clicks included);
* `mailgun`: a webhook's `event-data`, or an Events API item; ours in
  `message.headers.message-id`;
* `postmark`: one webhook (`RecordType`); ours in `Metadata.message_id` or a `Message-ID` in
  `Headers`, theirs `MessageID`.

Bounces: SES `Permanent` is hard, `Transient` and `Undetermined` soft; SendGrid `bounce` is hard
and `blocked` soft; Mailgun `failed` is hard when `severity` is `permanent`; Postmark's
`HardBounce`, `BadEmailAddress`, `ManuallyDeactivated` and `DMARCPolicy` are hard, its other
delivery failures soft, and its non-failures (`AutoResponder`, `Subscribe`, ...) are skipped.
Opens and clicks keep the user agent, and go through `engine.tracking.machine`'s rules;
SendGrid's own `sg_machine_open` flags an open too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from engine.text import shown, storable
from engine.tracking import machine

FORMATS = ("ses", "sendgrid", "mailgun", "postmark")
KINDS = ("delivered", "open", "click", "bounce", "complaint", "unsubscribe")
#: Characters kept of a free-text detail (a bounce's diagnostic, a click's URL).
DETAIL_CHARS = 500
#: Longest Message-ID or provider message id taken (RFC 5322 lines end at 998 characters).
MAX_ID_CHARS = 998
#: Event ids longer than this are kept as their digest (the dedup key is indexed).
MAX_KEY_CHARS = 200
#: Times an event may have.
EARLIEST = datetime(1970, 1, 2, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)


class RecordError(ValueError):
    """A record that cannot be used; its message says why, in one line."""


@dataclass(frozen=True)
class ProviderEvent:
    kind: str
    occurred_at: datetime
    #: Our Message-ID, without angle brackets, or None.
    message_id: str | None
    #: The provider's own id for the message, or None.
    provider_id: str | None
    #: The provider's id for this event, or a digest of the record: the event's dedup key.
    event_key: str
    #: Addresses the record names (a bounce's failed recipients), lowercased.
    recipients: tuple[str, ...] = ()
    hard: bool = False
    machine_reason: str | None = None
    payload: dict = field(default_factory=dict)


def digest(record: Mapping) -> str:
    """A record's content as a key: the same record exported twice is the same event."""
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _get(record: Mapping, path: str, default: object = None) -> object:
    """`record["a"]["b"]` for `path` "a.b"; `default` where any step is missing."""
    value: object = record
    for key in path.split("."):
        if not isinstance(value, Mapping) or key not in value:
            return default
        value = value[key]
    return value


def _text(record: Mapping, path: str) -> str | None:
    value = _get(record, path)
    if value is None or isinstance(value, Mapping | list):
        return None
    return str(value).strip() or None


def _message_id(value: str | None) -> str | None:
    """A Message-ID as `sent_emails` holds it: without its angle brackets."""
    if not value:
        return None
    return value.strip().strip("<>").strip() or None


def _when(value: object, what: str) -> datetime:
    """A timestamp as providers write it: ISO 8601, or Unix seconds (a number or digits), in
    UTC, between `EARLIEST` and `LATEST` (a time outside is no event of a message of ours, and
    would be poison for every query that reads it)."""
    if value is None or value == "":
        raise RecordError(f"no {what}")
    problem = f"{what} {shown(value, 40)!r} is not a time"
    if isinstance(value, bool):
        raise RecordError(problem)
    try:
        if isinstance(value, int | float) or str(value).replace(".", "", 1).isdigit():
            at = datetime.fromtimestamp(float(value), UTC)
        else:
            at = datetime.fromisoformat(str(value).strip())
            at = (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError, OSError):
        raise RecordError(problem) from None
    if not EARLIEST <= at <= LATEST:
        raise RecordError(f"{problem} between {EARLIEST.year} and {LATEST.year}")
    return at


def _list(value: object) -> list:
    return value if isinstance(value, list) else []


def _addresses(values: object, key: str | None = None) -> tuple[str, ...]:
    found = []
    for item in values if isinstance(values, list) else []:
        value = item.get(key) if key and isinstance(item, Mapping) else item
        if isinstance(value, str) and "@" in value:
            found.append(value.strip().lower())
    return tuple(found)


def _agent_reason(agent: str | None) -> str | None:
    """Our user-agent rules, for a record that reports one (no agent reported is no sign)."""
    return machine.machine_reason("GET", agent) if agent else None


def _detail(value: object) -> str:
    return shown(value, DETAIL_CHARS) if value else ""


# --- Amazon SES ---------------------------------------------------------------------------

_SES_KINDS = {
    "delivery": "delivered",
    "open": "open",
    "click": "click",
    "bounce": "bounce",
    "complaint": "complaint",
    "subscription": "unsubscribe",
}


def _ses(record: Mapping) -> ProviderEvent | None:
    if record.get("Type") == "Notification" and isinstance(record.get("Message"), str):
        try:  # an SNS envelope: the event is its Message, as JSON text
            inner = json.loads(record["Message"], parse_constant=refuse_constant)
        except (ValueError, RecursionError):
            raise RecordError("its SNS Message is not JSON") from None
        if not isinstance(inner, dict):
            raise RecordError("its SNS Message is not a JSON object")
        record = inner
    name = record.get("eventType") or record.get("notificationType")
    if not isinstance(name, str):
        raise RecordError("no eventType or notificationType: not an SES event")
    kind = _SES_KINDS.get(name.lower())
    if kind is None:
        return None  # Send, Reject, DeliveryDelay, Rendering Failure: nothing to record
    section = record.get(name[0].lower() + name[1:]) or {}
    if not isinstance(section, Mapping):
        raise RecordError(f"its {shown(name)} section is not an object")
    if kind == "unsubscribe" and not _get(section, "newTopicPreferences.unsubscribeAll"):
        return None  # a change of topics, not an unsubscribe
    mail = record.get("mail")
    if not isinstance(mail, Mapping):
        raise RecordError("no mail object")
    ours = _text(mail, "commonHeaders.messageId")
    for header in _list(mail.get("headers")):
        if isinstance(header, Mapping) and str(header.get("name", "")).lower() == "message-id":
            ours = str(header.get("value") or "") or ours
    recipients: tuple[str, ...] = ()
    hard, payload = False, {}
    if kind == "bounce":
        bounce_type = str(section.get("bounceType") or "")
        hard = bounce_type == "Permanent"
        failed = section.get("bouncedRecipients")
        recipients = _addresses(failed, "emailAddress")
        first = failed[0] if isinstance(failed, list) and failed else {}
        payload = {
            "bounce_type": bounce_type,
            "subtype": section.get("bounceSubType"),
            "detail": _detail(first.get("diagnosticCode") if isinstance(first, Mapping) else ""),
        }
    elif kind == "complaint":
        recipients = _addresses(section.get("complainedRecipients"), "emailAddress")
        payload = {"feedback_type": section.get("complaintFeedbackType")}
    elif kind == "click":
        payload = {"url": _detail(section.get("link"))}
    agent = _text(section, "userAgent")
    if agent:
        payload["user_agent"] = _detail(agent)
    return ProviderEvent(
        kind=kind,
        occurred_at=_when(section.get("timestamp") or mail.get("timestamp"), "timestamp"),
        message_id=_message_id(ours),
        provider_id=_text(mail, "messageId"),
        event_key=digest(record),
        recipients=recipients,
        hard=hard,
        machine_reason=_agent_reason(agent) if kind in ("open", "click") else None,
        payload=payload,
    )


# --- SendGrid -----------------------------------------------------------------------------

_SENDGRID_KINDS = {
    "delivered": "delivered",
    "open": "open",
    "click": "click",
    "bounce": "bounce",
    "spamreport": "complaint",
    "unsubscribe": "unsubscribe",
    "group_unsubscribe": "unsubscribe",
}


def _sendgrid(record: Mapping) -> ProviderEvent | None:
    name = record.get("event")
    if not isinstance(name, str):
        raise RecordError("no event: not a SendGrid event")
    kind = _SENDGRID_KINDS.get(name)
    if kind is None:
        return None  # processed, deferred, dropped, group_resubscribe
    provider_id = _text(record, "sg_message_id")
    email = _text(record, "email")
    agent = _text(record, "useragent")
    reason = _agent_reason(agent) if kind in ("open", "click") else None
    if kind == "open" and str(record.get("sg_machine_open")).lower() == "true":
        reason = "SendGrid: machine open"
    payload: dict = {"user_agent": _detail(agent)} if agent else {}
    if kind == "bounce":
        payload |= {"bounce_type": record.get("type"), "detail": _detail(record.get("reason"))}
    elif kind == "click":
        payload |= {"url": _detail(record.get("url"))}
    return ProviderEvent(
        kind=kind,
        occurred_at=_when(record.get("timestamp"), "timestamp"),
        message_id=_message_id(_text(record, "smtp-id")),
        provider_id=provider_id.split(".", 1)[0] if provider_id else None,
        event_key=_text(record, "sg_event_id") or digest(record),
        recipients=(email.lower(),) if email and kind in ("bounce", "complaint") else (),
        # "blocked" is a refusal that may pass (a reputation block, a full mailbox)
        hard=kind == "bounce" and record.get("type", "bounce") != "blocked",
        machine_reason=reason,
        payload=payload,
    )


# --- Mailgun ------------------------------------------------------------------------------

_MAILGUN_KINDS = {
    "delivered": "delivered",
    "opened": "open",
    "clicked": "click",
    "failed": "bounce",
    "complained": "complaint",
    "unsubscribed": "unsubscribe",
}


def _mailgun(record: Mapping) -> ProviderEvent | None:
    data = record.get("event-data", record)
    if not isinstance(data, Mapping) or not isinstance(data.get("event"), str):
        raise RecordError("no event-data.event: not a Mailgun event")
    kind = _MAILGUN_KINDS.get(data["event"])
    if kind is None:
        return None  # accepted, rejected, stored, list_member_uploaded
    agent = _text(data, "client-info.user-agent")
    payload: dict = {"user_agent": _detail(agent)} if agent else {}
    hard = False
    if kind == "bounce":
        hard = data.get("severity") == "permanent"
        payload |= {
            "bounce_type": data.get("severity"),
            "detail": _detail(
                _text(data, "delivery-status.description")
                or _text(data, "delivery-status.message")
                or data.get("reason")
            ),
        }
    elif kind == "click":
        payload |= {"url": _detail(data.get("url"))}
    recipient = _text(data, "recipient")
    return ProviderEvent(
        kind=kind,
        occurred_at=_when(data.get("timestamp"), "timestamp"),
        message_id=_message_id(_text(data, "message.headers.message-id")),
        provider_id=None,
        event_key=_text(data, "id") or digest(data),
        recipients=(recipient.lower(),) if recipient and kind in ("bounce", "complaint") else (),
        hard=hard,
        machine_reason=_agent_reason(agent) if kind in ("open", "click") else None,
        payload=payload,
    )


# --- Postmark -----------------------------------------------------------------------------

_POSTMARK_KINDS = {
    "Delivery": ("delivered", "DeliveredAt"),
    "Open": ("open", "ReceivedAt"),
    "Click": ("click", "ReceivedAt"),
    "Bounce": ("bounce", "BouncedAt"),
    "SpamComplaint": ("complaint", "BouncedAt"),
    "SubscriptionChange": ("unsubscribe", "ChangedAt"),
}
_POSTMARK_HARD = {"HardBounce", "BadEmailAddress", "ManuallyDeactivated", "DMARCPolicy"}
_POSTMARK_SOFT = {"SoftBounce", "Transient", "DnsError", "Blocked", "Unknown", "SMTPApiError"}


def _postmark(record: Mapping) -> ProviderEvent | None:
    name = record.get("RecordType")
    if not isinstance(name, str):
        raise RecordError("no RecordType: not a Postmark webhook")
    if name not in _POSTMARK_KINDS:
        return None  # Inbound, and anything newer
    kind, time_field = _POSTMARK_KINDS[name]
    bounce_type = str(record.get("Type") or "")
    hard = False
    if kind == "bounce":
        if bounce_type == "SpamComplaint":
            kind = "complaint"
        elif bounce_type in _POSTMARK_HARD or bounce_type in _POSTMARK_SOFT:
            hard = bounce_type in _POSTMARK_HARD
        else:
            return None  # AutoResponder, Subscribe, AddressChange, ...: not a failure
    if kind == "unsubscribe" and not record.get("SuppressSending"):
        return None  # a reactivation
    ours = _text(record, "Metadata.message_id") or _text(record, "Metadata.message-id")
    for header in _list(record.get("Headers")):
        if isinstance(header, Mapping) and str(header.get("Name", "")).lower() == "message-id":
            ours = str(header.get("Value") or "") or ours
    agent = _text(record, "UserAgent")
    payload: dict = {"user_agent": _detail(agent)} if agent else {}
    if kind in ("bounce", "complaint"):
        payload |= {"bounce_type": bounce_type, "detail": _detail(record.get("Details"))}
    elif kind == "click":
        payload |= {"url": _detail(record.get("OriginalLink"))}
    email = _text(record, "Email") or _text(record, "Recipient")
    at = record.get(time_field) or record.get("ReceivedAt") or record.get("BouncedAt")
    return ProviderEvent(
        kind=kind,
        occurred_at=_when(at, time_field),
        message_id=_message_id(ours),
        provider_id=_text(record, "MessageID"),
        event_key=(f"{name}:{record['ID']}" if record.get("ID") else digest(record)),
        recipients=(email.lower(),) if email and kind in ("bounce", "complaint") else (),
        hard=hard,
        machine_reason=_agent_reason(agent) if kind in ("open", "click") else None,
        payload=payload,
    )


PARSERS: dict[str, Callable[[Mapping], ProviderEvent | None]] = {
    "ses": _ses,
    "sendgrid": _sendgrid,
    "mailgun": _mailgun,
    "postmark": _postmark,
}


def refuse_constant(name: str) -> float:
    """`json.loads`' hook for NaN and Infinity, which JSON does not have (nor PostgreSQL's)."""
    raise ValueError(f"{name} is not a JSON value")


def parse(fmt: str, record: object) -> ProviderEvent | None:
    """`record` of provider `fmt` as an event, or None for a kind not recorded; raises
    `RecordError` for a record that cannot be used. Everything it returns can be stored."""
    if not isinstance(record, Mapping):
        raise RecordError(f"a record must be a JSON object, not {type(record).__name__}")
    try:
        event = PARSERS[fmt](record)
    except (TypeError, KeyError, AttributeError, IndexError) as exc:  # a field of another shape
        raise RecordError(
            f"a field has an unexpected shape ({type(exc).__name__}: {exc})"
        ) from None
    if event is None:
        return None
    if event.message_id is None and event.provider_id is None:
        raise RecordError("it names no message (no Message-ID and no provider message id)")
    for name, value in (("Message-ID", event.message_id), ("message id", event.provider_id)):
        if value is not None and len(value) > MAX_ID_CHARS:
            raise RecordError(f"its {name} is over {MAX_ID_CHARS} characters: no message's")
    key = storable(event.event_key)
    if len(key) > MAX_KEY_CHARS:
        key = hashlib.sha256(key.encode()).hexdigest()
    return dataclasses.replace(
        event,
        message_id=event.message_id and storable(event.message_id),
        provider_id=event.provider_id and storable(event.provider_id),
        event_key=key,
        recipients=tuple(storable(r) for r in event.recipients),
        machine_reason=event.machine_reason and storable(event.machine_reason),
        payload=_storable(event.payload),
    )


def _storable(value: object) -> object:
    """A payload with every text in it storable (`engine.text.storable`)."""
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, dict):
        return {storable(str(k)): _storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_storable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
