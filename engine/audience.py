"""A live demo audience for `penguin up --demo`: simulated recipients who open, click, reply,
answer out of office, bounce, unsubscribe and complain, through the real paths.

It reads what the engine sent from the local sink's Maildir (messages whose envelope recipient
is at `DOMAIN`, where the demo's contacts live) and decides once per message, from its
Message-ID, what its recipient does; then, when each action is due:

* **opens** fetch the message's pixel from the tracking server, as a mail client would (a
  browser's user agent); **machine opens** fetch it on arrival as Apple Mail Privacy Protection
  or Google's image proxy does, which the server flags `machine`;
* **clicks** follow one of the message's tracked links (the redirect is not followed: the demo
  sites do not exist);
* **unsubscribes** post the RFC 8058 one-click form to the message's List-Unsubscribe link;
* **replies**, **auto-replies** (out of office), **bounces** (an RFC 3464 DSN, 5.1.1) and
  **complaints** (an RFC 5965 ARF report, as a mailbox provider's feedback loop sends it) are
  real emails over SMTP into the sink, addressed to the sender account, where the mailbox
  sensor applies them.

`RATES` are shares of messages (clicks, replies, unsubscribes and complaints come after an open;
a bounced message does nothing else). A few recipients are `SCRIPTED` instead: whatever the
rates draw, a demo of any size shows each outcome at least once (`engine.demo` puts them in its
sample CSV). Delays are compressed for a demo (seconds to minutes after
arrival, times `pace`); every human action comes at least `HUMAN_AFTER` after arrival, so the
tracking server's "too soon" rule never mistakes it for a machine.

Everything it does is remembered in `PENGUIN_HOME/demo/audience.json`, so a restarted audience
does only what is left. It needs no database role: only the Maildir, the sink's port and the
links in the messages.
"""

from __future__ import annotations

import contextlib
import email
import hashlib
import heapq
import json
import logging
import os
import random
import re
import signal
import smtplib
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.utils import formatdate, getaddresses, make_msgid
from pathlib import Path

log = logging.getLogger(__name__)

#: Where the demo's contacts' addresses are (engine.demo writes them there).
DOMAIN = "customers.example"
BROWSER = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.5 Safari/605.1.15"
)
APPLE_PROXY = "Mozilla/5.0"
GOOGLE_PROXY = (
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
)
#: No human action comes sooner after a message arrives (the server's too-soon rule is 5 s).
HUMAN_AFTER = 8.0
REPLIES = (
    "Sounds interesting. Could you send me the pricing?",
    "Thanks for reaching out, let's talk next week.",
    "Not for us right now, but keep me posted.",
)
#: Recipients whose actions are fixed, not drawn: each outcome the dashboards show (open, click,
#: reply, unsubscribe, bounce, complaint) happens at least once in every demo, by the same real
#: paths as the drawn ones. Keyed by address (engine.demo writes these contacts first).
SCRIPTED: dict[str, tuple[str, ...]] = {
    f"grace.hopper@{DOMAIN}": ("machine_open", "open", "click"),
    f"alan.turing@{DOMAIN}": ("open", "reply"),
    f"barbara.liskov@{DOMAIN}": ("open", "click", "unsubscribe"),
    f"ken.thompson@{DOMAIN}": ("bounce",),
    f"radia.perlman@{DOMAIN}": ("open", "complaint"),
    f"frances.allen@{DOMAIN}": ("auto_reply",),
}
#: When each scripted action comes: seconds after arrival, times the pace; a person's actions
#: after `HUMAN_AFTER` as well, and clicks and answers after the open.
_SCRIPTED_DELAY = {
    "machine_open": 1.0,
    "bounce": 4.0,
    "auto_reply": 6.0,
    "open": 4.0,
    "click": 12.0,
    "unsubscribe": 22.0,
    "reply": 32.0,
    "complaint": 32.0,
}
_HUMAN = frozenset({"open", "click", "unsubscribe", "reply", "complaint"})
_TRACKED = re.compile(r"""https?://[^\s"'<>]+/([oc])/[A-Za-z0-9_.\-]+""")
_UNSUBSCRIBE = re.compile(r"<(https?://[^>]+/u/[^>]+)>")


@dataclass(frozen=True)
class Rates:
    """Shares of delivered messages; `click`, `reply` and `unsubscribe` among all messages
    (each comes after an open)."""

    open: float = 0.45
    click: float = 0.08
    reply: float = 0.04
    auto_reply: float = 0.01
    bounce: float = 0.02
    unsubscribe: float = 0.003
    complaint: float = 0.001
    #: Messages whose image a privacy proxy fetches on arrival.
    machine_open: float = 0.25

    def __post_init__(self) -> None:
        for name in ("click", "reply", "unsubscribe", "complaint"):
            if getattr(self, name) > self.open:
                raise ValueError(f"{name} ({getattr(self, name)}) cannot exceed open ({self.open})")


RATES = Rates()


@dataclass(frozen=True)
class Outgoing:
    """A message the engine sent to the audience, as the sink stored it."""

    name: str
    message_id: str
    sender: str
    recipient: str
    subject: str
    arrived: float
    pixel: str | None
    links: tuple[str, ...]
    unsubscribe: str | None


@dataclass(order=True, frozen=True)
class Action:
    due: float
    message_id: str = field(compare=True)
    kind: str = field(compare=True)


def read_outgoing(path: Path, domain: str = DOMAIN, tracking_url: str = "") -> Outgoing | None:
    """The message at `path` if the engine sent it to `domain`, else None; only its links to
    `tracking_url` (when given) are followed."""
    try:
        with path.open("rb") as handle:
            message = email.message_from_binary_file(handle)
        arrived = path.stat().st_mtime
        return _outgoing(path, message, arrived, domain, tracking_url)
    except Exception:  # noqa: BLE001 - a file it cannot read is no message of the audience's
        log.warning("skipping %s: not a message the audience can read", path.name, exc_info=True)
        return None


def _outgoing(
    path: Path, message: email.message.Message, arrived: float, domain: str, tracking_url: str
) -> Outgoing | None:
    rcpt = (message.get_all("X-RcptTo") or [""])[-1].strip().lower()
    message_id = (message.get("Message-ID") or "").strip().strip("<>")
    if not rcpt.endswith("@" + domain) or not message_id:
        return None
    pixel, links = None, []
    for part in message.walk():
        if part.get_content_maintype() != "text":
            continue
        payload = part.get_payload(decode=True) or b""
        text = payload.decode(part.get_content_charset() or "utf-8", errors="replace")
        for match in _TRACKED.finditer(text):
            if not match.group(0).startswith(tracking_url):
                continue  # a link elsewhere: the audience only talks to the tracking server
            if match.group(1) == "o":
                pixel = pixel or match.group(0)
            elif match.group(0) not in links:
                links.append(match.group(0))
    unsubscribe = _UNSUBSCRIBE.search(" ".join(str(message.get("List-Unsubscribe", "")).split()))
    if unsubscribe and not unsubscribe.group(1).startswith(tracking_url):
        unsubscribe = None
    sender = getaddresses([str(message.get("From", ""))])
    return Outgoing(
        name=path.name,
        message_id=message_id,
        sender=sender[0][1] if sender else "",
        recipient=rcpt,
        subject=" ".join(str(make_header(decode_header(message.get("Subject", "")))).split()),
        arrived=arrived,
        pixel=pixel,
        links=tuple(links),
        unsubscribe=unsubscribe.group(1) if unsubscribe else None,
    )


def plan(
    message: Outgoing,
    rates: Rates = RATES,
    pace: float = 1.0,
    scripted: Mapping[str, tuple[str, ...]] = SCRIPTED,
) -> list[Action]:
    """What the message's recipient does, and when: the same for the same Message-ID (its
    `scripted` actions, for a recipient who has them)."""
    if message.recipient in scripted:
        return _scripted(message, scripted[message.recipient], pace)
    seed = int.from_bytes(hashlib.sha256(message.message_id.encode()).digest()[:8], "big")
    rng = random.Random(seed)
    at = message.arrived
    actions = []

    def later(low: float, high: float, after: float = at) -> float:
        return after + pace * rng.uniform(low, high)

    if rng.random() < rates.bounce:
        return [Action(later(2, 10), message.message_id, "bounce")]
    if rng.random() < rates.auto_reply:
        actions.append(Action(later(5, 20), message.message_id, "auto_reply"))
    if message.pixel and rng.random() < rates.machine_open:
        actions.append(Action(at + rng.uniform(0.5, 3), message.message_id, "machine_open"))
    if message.pixel and rng.random() < rates.open:  # no pixel (tracking off): no open seen
        opened = max(later(15, 240), at + HUMAN_AFTER)
        actions.append(Action(opened, message.message_id, "open"))
        # Given an open, the conditional shares that make the overall rates.
        if message.links and rng.random() < rates.click / rates.open:
            actions.append(Action(later(5, 60, opened), message.message_id, "click"))
        if rng.random() < rates.reply / rates.open:
            actions.append(Action(later(30, 180, opened), message.message_id, "reply"))
        if message.unsubscribe and rng.random() < rates.unsubscribe / rates.open:
            actions.append(Action(later(10, 90, opened), message.message_id, "unsubscribe"))
        if rng.random() < rates.complaint / rates.open:
            actions.append(Action(later(60, 240, opened), message.message_id, "complaint"))
    return actions


def _scripted(message: Outgoing, kinds: tuple[str, ...], pace: float) -> list[Action]:
    """A scripted recipient's actions; those its message cannot carry (no pixel, no links, no
    unsubscribe link to the tracking server) are left out, as for drawn ones."""
    possible = {
        "open": message.pixel is not None,
        "machine_open": message.pixel is not None,
        "click": bool(message.links),
        "unsubscribe": message.unsubscribe is not None,
    }
    return [
        Action(
            message.arrived + (HUMAN_AFTER if kind in _HUMAN else 0) + pace * _SCRIPTED_DELAY[kind],
            message.message_id,
            kind,
        )
        for kind in kinds
        if possible.get(kind, True)
    ]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # the click's target is not fetched
        return None


_HTTP = urllib.request.build_opener(_NoRedirect)


def _request(url: str, agent: str, data: bytes | None = None) -> int:
    request = urllib.request.Request(url, data=data, headers={"User-Agent": agent})
    if data is not None:
        request.add_header("Content-Type", "application/x-www-form-urlencoded")
    try:
        with _HTTP.open(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:  # a redirect (not followed) or the server's answer
        return exc.code


class Audience:
    """Watches the Maildir and acts (module docstring). `clock` gives Unix time."""

    def __init__(
        self,
        maildir: Path,
        smtp_host: str,
        smtp_port: int,
        state: Path,
        *,
        rates: Rates = RATES,
        pace: float = 1.0,
        scripted: Mapping[str, tuple[str, ...]] = SCRIPTED,
        domain: str = DOMAIN,
        tracking_url: str = "",
        clock: Callable[[], float] = time.time,
    ):
        self.tracking_url = tracking_url.rstrip("/") + "/" if tracking_url else ""
        self.maildir, self.smtp = maildir, (smtp_host, smtp_port)
        self.state, self.rates, self.pace, self.domain, self.clock = (
            state,
            rates,
            pace,
            domain,
            clock,
        )
        self.scripted = scripted
        self.done: dict[str, list[str]] = self._load()
        self.messages: dict[str, Outgoing] = {}
        self.seen: set[str] = set()
        self.due: list[Action] = []
        self.counts: Counter[str] = Counter()

    def _load(self) -> dict[str, list[str]]:
        try:
            return json.loads(self.state.read_text(encoding="utf-8"))["done"]
        except (OSError, ValueError, KeyError, TypeError):
            return {}

    def _save(self) -> None:
        self.state.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state.with_name(self.state.name + ".tmp")
        tmp.write_text(json.dumps({"done": self.done}), encoding="utf-8")
        os.replace(tmp, self.state)

    def _files(self) -> Iterator[Path]:
        for sub in ("new", "cur"):
            with contextlib.suppress(FileNotFoundError):
                yield from (p for p in (self.maildir / sub).iterdir() if p.name[0] != ".")

    def scan(self) -> int:
        """Plan the messages that arrived since the last scan; how many."""
        found = 0
        for path in self._files():
            if path.name in self.seen:
                continue
            self.seen.add(path.name)
            message = read_outgoing(path, self.domain, self.tracking_url)
            if message is None or message.message_id in self.messages:
                continue
            self.messages[message.message_id] = message
            found += 1
            done = set(self.done.get(message.message_id, ()))
            for action in plan(message, self.rates, self.pace, self.scripted):
                if action.kind not in done:
                    heapq.heappush(self.due, action)
        return found

    def act_due(self) -> list[tuple[Action, str]]:
        """Do every action that is due; each with how it went."""
        now, results = self.clock(), []
        while self.due and self.due[0].due <= now:
            action = heapq.heappop(self.due)
            try:
                outcome = self._act(action, self.messages[action.message_id])
            except (OSError, smtplib.SMTPException) as exc:  # the server is away: later
                log.warning("%s of %s failed (%s); retrying", action.kind, action.message_id, exc)
                heapq.heappush(self.due, Action(now + 5, action.message_id, action.kind))
                break
            except ValueError as exc:  # this message's own trouble (a link it cannot follow)
                outcome = f"skipped: {exc}"
            self.done.setdefault(action.message_id, []).append(action.kind)
            self.counts[action.kind] += 1
            results.append((action, outcome))
        if results:
            self._save()
        return results

    def _act(self, action: Action, message: Outgoing) -> str:
        kind = action.kind
        if kind in ("open", "machine_open"):
            agent = BROWSER if kind == "open" else self._proxy(message)
            return f"HTTP {_request(message.pixel, agent)}"
        if kind == "click":
            rng = random.Random(message.message_id)
            return f"HTTP {_request(rng.choice(message.links), BROWSER)}"
        if kind == "unsubscribe":
            status = _request(message.unsubscribe, BROWSER, b"List-Unsubscribe=One-Click")
            return f"HTTP {status}"
        text, envelope_from = self._answer(kind, message)
        with smtplib.SMTP(*self.smtp, timeout=10) as smtp:
            # SMTP lines end in CRLF (smtplib fixes line ends of text, not of bytes)
            data = text.replace("\r\n", "\n").replace("\n", "\r\n").encode()
            smtp.sendmail(envelope_from, [message.sender], data)
        return "sent"

    @staticmethod
    def _proxy(message: Outgoing) -> str:
        return GOOGLE_PROXY if message.message_id[-1] in "0123" else APPLE_PROXY

    def _answer(self, kind: str, message: Outgoing) -> tuple[str, str]:
        """The email a reply, auto-reply or bounce is, and its envelope sender."""
        date = formatdate(self.clock(), localtime=False)
        answer_id = make_msgid(kind.replace("_", "-"), domain=self.domain)
        if kind == "bounce":
            return _dsn(message, self.domain, date, answer_id), ""
        if kind == "complaint":
            return _arf(message, self.domain, date, answer_id), f"fbl@mx.{self.domain}"
        answer = EmailMessage()
        answer["From"] = message.recipient
        answer["To"] = message.sender
        answer["Date"] = date
        answer["Message-ID"] = answer_id
        answer["In-Reply-To"] = f"<{message.message_id}>"
        answer["References"] = f"<{message.message_id}>"
        if kind == "auto_reply":
            answer["Subject"] = f"Out of Office: {message.subject}"
            answer["Auto-Submitted"] = "auto-replied"
            answer.set_content("I am out of the office until Monday, with limited access to email.")
        else:
            answer["Subject"] = f"Re: {message.subject}"
            answer.set_content(random.Random(message.message_id).choice(REPLIES))
        return answer.as_string(), message.recipient

    def run(self, stop: threading.Event, interval: float = 1.0) -> None:
        while not stop.is_set():
            self.scan()
            for action, outcome in self.act_due():
                log.info(
                    "%s %s: %s", action.kind, self.messages[action.message_id].recipient, outcome
                )
            stop.wait(interval)


def _dsn(message: Outgoing, domain: str, date: str, dsn_id: str) -> str:
    """An RFC 3464 report, as Postfix writes it: the recipient's mailbox does not exist."""
    r = message.recipient
    return f"""From: Mail Delivery System <MAILER-DAEMON@mx.{domain}>
To: {message.sender}
Subject: Undelivered Mail Returned to Sender
Message-ID: {dsn_id}
Date: {date}
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="DSN-BOUNDARY"

--DSN-BOUNDARY
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mx.{domain}. Your message could not be delivered to
<{r}>: the mailbox does not exist.

--DSN-BOUNDARY
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.{domain}

Final-Recipient: rfc822; {r}
Action: failed
Status: 5.1.1
Diagnostic-Code: smtp; 550 5.1.1 <{r}>: Recipient address rejected: User unknown

--DSN-BOUNDARY
Content-Type: text/rfc822-headers

From: {message.sender}
To: {r}
Subject: {message.subject}
Message-ID: <{message.message_id}>

--DSN-BOUNDARY--
"""


def _arf(message: Outgoing, domain: str, date: str, report_id: str) -> str:
    """An RFC 5965 abuse report, as a mailbox provider's feedback loop sends it: the recipient
    marked the message as spam."""
    return f"""From: Feedback Loop <fbl@mx.{domain}>
To: {message.sender}
Subject: FW: {message.subject}
Message-ID: {report_id}
Date: {date}
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="ARF-BOUNDARY"

--ARF-BOUNDARY
Content-Type: text/plain; charset=us-ascii

This is an email abuse report for a message sent to <{message.recipient}>.

--ARF-BOUNDARY
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: PenguinMailsDemo/1.0
Version: 1
Original-Mail-From: <{message.sender}>
Original-Rcpt-To: <{message.recipient}>
Arrival-Date: {date}

--ARF-BOUNDARY
Content-Type: text/rfc822-headers

From: {message.sender}
To: {message.recipient}
Subject: {message.subject}
Message-ID: <{message.message_id}>

--ARF-BOUNDARY--
"""


def main() -> None:  # pragma: no cover - run by `penguin up --demo`
    from engine.config import Settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = Settings.from_env()
    pace = float(os.environ.get("PENGUIN_DEMO_PACE") or 1.0)
    audience = Audience(
        settings.maildir,
        settings.smtp_sink_host,
        settings.smtp_sink_port,
        settings.home / "demo" / "audience.json",
        pace=pace,
        tracking_url=settings.tracking_url,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    log.info("demo audience watching %s (pace %s)", settings.maildir, pace)
    audience.run(stop)
    log.info("demo audience stopped: %s", dict(audience.counts))


if __name__ == "__main__":
    main()
