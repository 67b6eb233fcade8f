"""Webhook events as each provider writes them (the shapes of their documentation's examples),
for a message of ours named by its Message-ID."""

from __future__ import annotations

import json
import zlib
from datetime import datetime

#: The kinds each sample function writes; `bounce` is hard unless `hard=False`.
KINDS = ("delivered", "open", "click", "bounce", "complaint", "unsubscribe")
AGENT = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 Version/17.0"


def ses(kind: str, message_id: str, to: str, at: datetime, *, hard=True, agent=AGENT, sns=False):
    name = {
        "delivered": "Delivery",
        "open": "Open",
        "click": "Click",
        "bounce": "Bounce",
        "complaint": "Complaint",
        "unsubscribe": "Subscription",
    }[kind]
    stamp = at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    mail = {
        "timestamp": stamp,
        "source": "sales@acme.example",
        "messageId": f"0100018c-ses-{message_id[:12]}",
        "destination": [to],
        "headersTruncated": False,
        "headers": [
            {"name": "From", "value": "sales@acme.example"},
            {"name": "Message-ID", "value": f"<{message_id}>"},
        ],
        "commonHeaders": {"from": ["sales@acme.example"], "to": [to], "messageId": "x"},
    }
    section: dict = {"timestamp": stamp}
    if kind == "delivered":
        section |= {"recipients": [to], "smtpResponse": "250 2.6.0 Message received"}
    elif kind in ("open", "click"):
        section |= {"userAgent": agent, "ipAddress": "192.0.2.1"}
        if kind == "click":
            section["link"] = "https://acme.example/pricing"
    elif kind == "bounce":
        section |= {
            "bounceType": "Permanent" if hard else "Transient",
            "bounceSubType": "General",
            "bouncedRecipients": [
                {"emailAddress": to, "diagnosticCode": "smtp; 550 5.1.1 user unknown"}
            ],
        }
    elif kind == "complaint":
        section |= {
            "complainedRecipients": [{"emailAddress": to}],
            "complaintFeedbackType": "abuse",
        }
    else:
        section |= {"contactList": "news", "newTopicPreferences": {"unsubscribeAll": True}}
    record = {"eventType": name, "mail": mail, name[0].lower() + name[1:]: section}
    if sns:
        return {"Type": "Notification", "MessageId": "sns-1", "Message": json.dumps(record)}
    return record


def sendgrid(kind: str, message_id: str, to: str, at: datetime, *, hard=True, agent=AGENT):
    event = {
        "delivered": "delivered",
        "open": "open",
        "click": "click",
        "bounce": "bounce",
        "complaint": "spamreport",
        "unsubscribe": "unsubscribe",
    }[kind]
    record = {
        "email": to,
        "timestamp": int(at.timestamp()),
        "event": event,
        "sg_event_id": f"sg-{kind}-{message_id[:16]}",
        "sg_message_id": f"sgid{message_id[:10]}.filterdrecv-5645d9c87f-abcde-1-5E0B88-1.0",
    }
    if kind not in ("open", "click", "unsubscribe", "complaint"):  # as SendGrid does
        record["smtp-id"] = f"<{message_id}>"
    if kind in ("open", "click"):
        record["useragent"] = agent
    if kind == "click":
        record["url"] = "https://acme.example/pricing"
    if kind == "bounce":
        record |= {"type": "bounce" if hard else "blocked", "reason": "550 5.1.1 unknown"}
    return record


def mailgun(kind: str, message_id: str, to: str, at: datetime, *, hard=True, agent=AGENT):
    event = {
        "delivered": "delivered",
        "open": "opened",
        "click": "clicked",
        "bounce": "failed",
        "complaint": "complained",
        "unsubscribe": "unsubscribed",
    }[kind]
    data = {
        "id": f"mg-{kind}-{message_id[:16]}",
        "timestamp": at.timestamp(),
        "event": event,
        "recipient": to,
        "message": {"headers": {"message-id": message_id, "to": to}},
    }
    if kind in ("open", "click"):
        data["client-info"] = {"user-agent": agent, "client-type": "mobile browser"}
    if kind == "click":
        data["url"] = "https://acme.example/pricing"
    if kind == "bounce":
        data |= {
            "severity": "permanent" if hard else "temporary",
            "reason": "bounce",
            "delivery-status": {"code": 550, "message": "5.1.1 No such user"},
        }
    return {"signature": {"token": "t", "timestamp": "1", "signature": "s"}, "event-data": data}


def postmark(kind: str, message_id: str, to: str, at: datetime, *, hard=True, agent=AGENT):
    stamp = at.isoformat()
    pm_id = f"883953f4-{message_id[:8]}"
    base = {"MessageID": pm_id, "Recipient": to, "Metadata": {"message_id": message_id}}
    if kind == "delivered":
        return base | {"RecordType": "Delivery", "DeliveredAt": stamp, "Details": "250 OK"}
    if kind == "open":
        return base | {"RecordType": "Open", "ReceivedAt": stamp, "UserAgent": agent}
    if kind == "click":
        return base | {
            "RecordType": "Click",
            "ReceivedAt": stamp,
            "UserAgent": agent,
            "OriginalLink": "https://acme.example/pricing",
        }
    if kind == "bounce":
        return base | {
            "RecordType": "Bounce",
            "ID": zlib.crc32(message_id.encode()),
            "Type": "HardBounce" if hard else "SoftBounce",
            "Email": to,
            "BouncedAt": stamp,
            "Details": "smtp;550 5.1.1 The email account does not exist",
        }
    if kind == "complaint":
        return base | {
            "RecordType": "SpamComplaint",
            "ID": zlib.crc32(message_id.encode()) + 1,
            "Type": "SpamComplaint",
            "Email": to,
            "BouncedAt": stamp,
        }
    return base | {
        "RecordType": "SubscriptionChange",
        "ChangedAt": stamp,
        "SuppressSending": True,
        "SuppressionReason": "ManualSuppression",
    }


SAMPLES = {"ses": ses, "sendgrid": sendgrid, "mailgun": mailgun, "postmark": postmark}


def json_lines(records: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)
