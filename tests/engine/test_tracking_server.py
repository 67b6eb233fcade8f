"""The tracking server over real HTTP, against real PostgreSQL: opens, clicks, unsubscribes,
what a scanner or an attacker sends, and what a shutdown must not lose."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa
import uvicorn

from engine.campaigns import Step
from engine.db import tenant_transaction
from engine.sending.messenger import CourierConfig
from engine.sending.scheduler import Config, send_due
from engine.tracking.events import Config as WriterConfig
from engine.tracking.events import Event, EventWriter
from engine.tracking.limits import Limits, uvicorn_config
from engine.tracking.links import Tracking
from engine.tracking.server import PIXEL, create_app
from engine.tracking.tokens import Kind, Tokens
from tests.conftest import RecordingHandler, free_port
from tests.factories import seed_tenant

KEY = "test-secret-key-of-enough-length-0123456789"
PERSON = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0) AppleWebKit/605.1.15 Thunderbird/128.0"


@dataclass
class Clock:
    at: datetime

    def __call__(self) -> datetime:
        return self.at


@dataclass
class TrackingServer:
    port: int
    tracking: Tracking
    clock: Clock
    app: object
    server: uvicorn.Server
    thread: threading.Thread

    def request(
        self, method: str, url: str, *, agent: str = PERSON, body: bytes | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        parts = urlsplit(url)
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"User-Agent": agent} if agent else {}
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request(method, parts.path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        conn.close()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data

    def flushed(self, timeout: float = 10.0) -> None:
        """Wait until the writer has nothing queued or in flight."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, _, body = self.request("GET", "/health")
            if status == 200 and json.loads(body)["pending"] == 0:
                return
            time.sleep(0.02)
        raise AssertionError("events still queued")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def _start(
    database,
    now,
    config: WriterConfig | None = None,
    app_engine=None,
    *,
    tokens: Tokens | None = None,
    limits: Limits | None = None,
) -> TrackingServer:
    """The server as `serve` runs it (its uvicorn settings and limits), in a thread."""
    tokens = tokens or Tokens(KEY)
    port = free_port()
    clock = Clock(now + timedelta(hours=1))
    app = create_app(app_engine or database.app, tokens, config=config, clock=clock)
    server = uvicorn.Server(
        uvicorn_config(app, "127.0.0.1", port, limits, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the tracking server did not start"
        time.sleep(0.02)
    tracking = Tracking(tokens, f"http://127.0.0.1:{port}")
    return TrackingServer(port, tracking, clock, app, server, thread)


@pytest.fixture
def tracking_server(database, now) -> Iterator[TrackingServer]:
    server = _start(database, now)
    yield server
    server.stop()


HTML = (
    '<p>Hi {{ first_name }}, <a href="https://acme.example/a">A</a> '
    '<a href="https://acme.example/b">B</a></p>'
)
TEXT = "Hello https://acme.example/t"


def _sent(database, smtp_server, now, tmp_path, tracking, *, name="acme", steps=None):
    tenant = seed_tenant(
        database,
        name,
        now,
        tmp_path,
        steps=steps
        or [Step("email", subject="Hi", body_text="Hello https://acme.example/t", body_html=HTML)],
    )
    report = send_due(database.app, smtp_server.server(), now, config=Config(tracking=tracking))
    assert report.sent == 3
    return tenant


def _links(message) -> dict[str, list[str]]:
    html_part = message.get_body(("html",)).get_content()
    text_part = message.get_body(("plain",)).get_content()
    return {
        "open": re.findall(r'src="([^"]+/o/[^"]+)"', html_part),
        "click": re.findall(r'href="([^"]+/c/[^"]+)"', html_part)
        + re.findall(r"\S+/c/[\w-]+\.[\w-]+", text_part),
        "unsubscribe": re.findall(r"<(http[^>]+/u/[^>]+)>", message["List-Unsubscribe"]),
    }


def _events(database, tenant, *types: str):
    with tenant_transaction(database.app, tenant.tenant_id) as conn:
        return conn.execute(
            sa.text(
                "select e.event_type, m.recipient_email, e.machine_reason, e.is_machine, "
                "e.payload, e.contact_id = m.contact_id and e.campaign_id = m.campaign_id "
                "and e.step_id = m.step_id as keys_match "
                "from app.email_events e join app.sent_emails m on m.id = e.sent_email_id "
                "where e.event_type = any(:types) order by e.occurred_at, e.id"
            ),
            {"types": list(types)},
        ).all()


def _message_to(smtp_server, address):
    return next(m for m in smtp_server.messages if m["To"] == address)


def test_an_open_and_a_click_are_recorded_on_their_message_and_the_click_goes_where_it_pointed(
    database, smtp_server, now, tmp_path, tracking_server
):
    tenant = _sent(database, smtp_server, now, tmp_path, tracking_server.tracking)
    links = _links(_message_to(smtp_server, "acme0@example.com"))
    assert len(links["open"]) == 1 and len(links["click"]) == 3
    status, headers, body = tracking_server.request("GET", links["open"][0])
    assert (status, headers["content-type"], body) == (200, "image/gif", PIXEL)
    assert "no-store" in headers["cache-control"]
    status, headers, _ = tracking_server.request("GET", links["click"][1])
    assert (status, headers["location"]) == (302, "https://acme.example/b")
    tracking_server.flushed()
    events = _events(database, tenant, "open", "click")
    assert [(e.event_type, e.recipient_email, e.is_machine, e.keys_match) for e in events] == [
        ("open", "acme0@example.com", False, True),
        ("click", "acme0@example.com", False, True),
    ]
    assert events[1].payload["url"] == "https://acme.example/b"
    assert events[1].payload["user_agent"] == PERSON


def test_the_unsubscribe_headers_go_out_on_plain_lines_a_mailbox_provider_reads(
    database, smtp_server, now, tmp_path, tracking_server
):
    _sent(database, smtp_server, now, tmp_path, tracking_server.tracking)
    raw = dict(_message_to(smtp_server, "acme0@example.com").raw_items())
    link = raw["List-Unsubscribe"]
    assert "=?" not in link and "\n" not in link  # no RFC 2047 encoded words, no folding
    assert re.fullmatch(
        r"<http://127\.0\.0\.1:\d+/u/[\w.-]+>, <mailto:sales@acme\.example\?subject=unsubscribe>",
        link,
    )
    assert raw["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_a_forged_or_altered_token_gets_404_and_records_nothing(
    database, smtp_server, now, tmp_path, tracking_server
):
    tenant = _sent(database, smtp_server, now, tmp_path, tracking_server.tracking)
    links = _links(_message_to(smtp_server, "acme0@example.com"))
    opened, clicked, gone = links["open"][0], links["click"][0], links["unsubscribe"][0]
    other_key = Tracking(Tokens("another-key-" + "z" * 40), tracking_server.tracking.public_url)
    forged = other_key.url(Kind.OPEN, tenant.tenant_id, uuid.uuid4())
    token = clicked.rsplit("/", 1)[1]
    altered = (
        clicked.rsplit("/", 1)[0]
        + "/"
        + token[:10]
        + ("A" if token[10] != "A" else "B")
        + token[11:]
    )
    for method, url in [
        ("GET", forged),
        ("GET", altered),
        ("GET", opened.replace("/o/", "/c/")),  # a token of another kind
        ("GET", clicked.replace("/c/", "/o/")),
        ("POST", opened.replace("/o/", "/u/")),
        ("GET", opened[:-3]),
        ("GET", "/o/..%2f..%2fetc%2fpasswd"),
        ("GET", "/c/" + "A" * 5000),
    ]:
        assert tracking_server.request(method, url)[0] == 404, url
    assert tracking_server.request("GET", gone)[0] == 200
    tracking_server.flushed()
    assert _events(database, tenant, "open", "click", "unsubscribe") == []


def test_a_token_naming_another_tenants_message_records_nothing(
    database, smtp_server, now, tmp_path, tracking_server
):
    acme = _sent(database, smtp_server, now, tmp_path, tracking_server.tracking)
    other = seed_tenant(database, "other", now, tmp_path, enroll=False)
    with tenant_transaction(database.app, acme.tenant_id) as conn:
        message = conn.execute(sa.text("select id from app.sent_emails limit 1")).scalar_one()
    # Signed with the right key (as a bug elsewhere could make it): the tenant named must own it.
    url = tracking_server.tracking.url(Kind.UNSUBSCRIBE, other.tenant_id, message)
    assert tracking_server.request("POST", url, body=b"List-Unsubscribe=One-Click")[0] == 200
    tracking_server.flushed()
    assert _events(database, acme, "unsubscribe") == []
    with tenant_transaction(database.app, acme.tenant_id) as conn:
        assert conn.execute(sa.text("select count(*) from app.suppressions")).scalar() == 0


def test_a_get_on_the_unsubscribe_link_only_shows_the_button_and_its_post_unsubscribes_once(
    database, smtp_server, now, tmp_path, tracking_server
):
    tenant = _sent(database, smtp_server, now, tmp_path, tracking_server.tracking)
    url = _links(_message_to(smtp_server, "acme1@example.com"))["unsubscribe"][0]
    for _ in range(3):  # a scanner following the link, twice, and a HEAD
        status, _, body = tracking_server.request("GET", url)
        assert status == 200 and b'<form method="post">' in body
    assert tracking_server.request("HEAD", url)[0] == 200
    tracking_server.flushed()
    assert _events(database, tenant, "unsubscribe") == []
    # RFC 8058's one-click POST, then the page's button, then a replay: one unsubscribe.
    for body in (b"List-Unsubscribe=One-Click", b"List-Unsubscribe=One-Click", b""):
        status, _, page = tracking_server.request("POST", url, body=body)
        assert status == 200 and b"You are unsubscribed" in page
    events = _events(database, tenant, "unsubscribe")
    assert [(e.event_type, e.recipient_email) for e in events] == [
        ("unsubscribe", "acme1@example.com")
    ]
    with tenant_transaction(database.app, tenant.tenant_id) as conn:
        assert conn.execute(sa.text("select email, reason from app.suppressions")).all() == [
            ("acme1@example.com", "unsubscribe")
        ]
        assert conn.execute(
            sa.text("select email from app.contacts where status = 'unsubscribed'")
        ).scalars().all() == ["acme1@example.com"]


def test_an_unsubscribe_ends_the_sequence_at_the_next_pass(
    database, smtp_server, now, tmp_path, tracking_server
):
    steps = [
        Step("email", subject="One", body_text="first", body_html=HTML),
        Step("wait", wait=timedelta(days=1)),
        Step("email", subject="Two", body_text="second"),
    ]
    tenant = _sent(database, smtp_server, now, tmp_path, tracking_server.tracking, steps=steps)
    url = _links(_message_to(smtp_server, "acme2@example.com"))["unsubscribe"][0]
    assert tracking_server.request("POST", url, body=b"List-Unsubscribe=One-Click")[0] == 200
    later = now + timedelta(days=2)
    config = Config(tracking=tracking_server.tracking)
    send_due(database.app, smtp_server.server(), later, config=config)
    send_due(database.app, smtp_server.server(), later, config=config)
    seconds = sorted(m["To"] for m in smtp_server.messages if m["Subject"] == "Two")
    assert seconds == ["acme0@example.com", "acme1@example.com"]
    with tenant_transaction(database.app, tenant.tenant_id) as conn:
        assert (
            conn.execute(
                sa.text(
                    "select cc.exit_reason from app.campaign_contacts cc "
                    "join app.contacts c on c.id = cc.contact_id "
                    "where c.email = 'acme2@example.com'"
                )
            ).scalar_one()
            == "contact unsubscribed"
        )


class _UnsubscribingHandler(RecordingHandler):
    """During the first message's DATA, has a recipient not yet marked unsubscribe: committed
    after the batch was claimed, before that recipient's conversation."""

    def __init__(self, unsubscribe) -> None:
        super().__init__()
        self.unsubscribe = unsubscribe

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        if not self.messages:
            await asyncio.to_thread(self.unsubscribe)
        return await super().handle_DATA(server, session, envelope)


def test_an_unsubscribe_committed_while_the_next_send_is_claimed_stops_that_send(
    database, now, tmp_path, tracking_server
):
    from aiosmtpd.controller import Controller

    tenant = seed_tenant(database, "acme", now, tmp_path, rows=None)
    tracking = tracking_server.tracking
    statuses: list[int] = []

    gone: list[str] = []

    def unsubscribe_the_next() -> None:
        with tenant_transaction(database.app, tenant.tenant_id) as conn:
            # Claimed with the batch, so its row exists, still queued: not yet marked.
            message, address = conn.execute(
                sa.text(
                    "select id, recipient_email from app.sent_emails where status = 'queued' "
                    "order by recipient_email limit 1"
                )
            ).one()
        gone.append(address)
        url = tracking.url(Kind.UNSUBSCRIBE, tenant.tenant_id, message)
        statuses.append(tracking_server.request("POST", url, body=b"List-Unsubscribe=One-Click")[0])

    handler = _UnsubscribingHandler(unsubscribe_the_next)
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        from engine.senders import SmtpServer

        config = Config(tracking=tracking, courier=CourierConfig(concurrency=1))
        report = send_due(database.app, SmtpServer("127.0.0.1", port), now, config=config)
    finally:
        controller.stop()
    assert statuses == [200]
    everyone = {"acme0@example.com", "acme1@example.com", "acme2@example.com"}
    assert sorted(m["To"] for m in handler.messages) == sorted(everyone - set(gone))
    assert report.sent == 2


def test_machine_opens_and_clicks_are_kept_and_flagged(
    database, smtp_server, now, tmp_path, tracking_server
):
    tenant = _sent(database, smtp_server, now, tmp_path, tracking_server.tracking)
    first = _links(_message_to(smtp_server, "acme0@example.com"))
    second = _links(_message_to(smtp_server, "acme1@example.com"))
    third = _links(_message_to(smtp_server, "acme2@example.com"))
    request = tracking_server.request
    request("HEAD", first["open"][0])
    request("GET", first["open"][0], agent="Mozilla/5.0")  # Apple Mail Privacy Protection
    request("GET", first["open"][0], agent="Mozilla/5.0 (via ggpht.com GoogleImageProxy)")
    tracking_server.clock.at = now + timedelta(seconds=2)  # two seconds after the send
    request("GET", second["open"][0])
    tracking_server.clock.at = now + timedelta(hours=2)
    request("GET", second["click"][0])  # a person: one link, then a scanner much later
    tracking_server.clock.at = now + timedelta(hours=3)
    for url in third["click"][:2] + second["click"][:2]:  # every link of the HTML parts, at once
        request("GET", url)
        tracking_server.clock.at += timedelta(seconds=1)
    request("GET", third["click"][2])  # the text part's only link: a person's, whatever else
    tracking_server.flushed()
    events = _events(database, tenant, "open", "click")
    flagged = [(e.event_type, e.recipient_email, e.machine_reason) for e in events]
    assert flagged == [
        ("open", "acme1@example.com", "open within seconds of sending"),
        ("open", "acme0@example.com", "HEAD request"),
        ("open", "acme0@example.com", "Apple Mail Privacy Protection"),
        ("open", "acme0@example.com", "user agent GoogleImageProxy"),
        ("click", "acme1@example.com", None),
        ("click", "acme2@example.com", "clicks on every link within seconds"),
        ("click", "acme2@example.com", "clicks on every link within seconds"),
        ("click", "acme1@example.com", "clicks on every link within seconds"),
        ("click", "acme1@example.com", "clicks on every link within seconds"),
        ("click", "acme2@example.com", None),
    ]
    assert [e.is_machine for e in events] == [True] * 4 + [False] + [True] * 4 + [False]


def test_a_replayed_open_records_once(database, smtp_server, now, tmp_path, tracking_server):
    tenant = _sent(database, smtp_server, now, tmp_path, tracking_server.tracking)
    url = _links(_message_to(smtp_server, "acme0@example.com"))["open"][0]
    for _ in range(5):
        assert tracking_server.request("GET", url)[0] == 200
    tracking_server.clock.at += timedelta(minutes=5)  # the person reads it again later
    assert tracking_server.request("GET", url)[0] == 200
    tracking_server.flushed()
    assert len(_events(database, tenant, "open")) == 2


def test_events_still_queued_at_shutdown_are_written(database, smtp_server, now, tmp_path):
    server = _start(database, now, WriterConfig(max_batch=10_000, max_delay=60))
    try:
        tenant = _sent(database, smtp_server, now, tmp_path, server.tracking)
        for message in smtp_server.messages:
            for url in _links(message)["click"]:
                assert server.request("GET", url)[0] == 302
        assert _events(database, tenant, "click") == []  # still waiting for their batch
    finally:
        server.stop()
    assert len(_events(database, tenant, "click")) == 9


def test_an_event_the_database_refuses_is_dropped_alone(database, smtp_server, now, tmp_path):
    tenant = _sent(database, smtp_server, now, tmp_path, None)
    with tenant_transaction(database.app, tenant.tenant_id) as conn:
        ids = (
            conn.execute(sa.text("select id from app.sent_emails order by recipient_email"))
            .scalars()
            .all()
        )
    writer = EventWriter(database.app, WriterConfig(max_delay=0.5))

    def event(message, key, payload):
        return Event("open", tenant.tenant_id, message, now + timedelta(hours=1), key, payload)

    events = [
        event(ids[0], "a", {"user_agent": PERSON}),
        event(ids[1], "b", {"user_agent": "bad \u0000 agent"}),  # jsonb refuses NUL
        event(ids[2], "c", {"user_agent": PERSON}),
    ]

    async def main() -> None:
        await writer.start()
        for e in events:
            await writer.add(e)
        await writer.close()

    asyncio.run(main())
    assert (writer.written, writer.dropped) == (2, 1)
    got = sorted(e.recipient_email for e in _events(database, tenant, "open"))
    assert got == ["acme0@example.com", "acme2@example.com"]


def test_without_a_public_url_mail_through_a_real_server_carries_no_link_to_this_machine(
    database, smtp_server, now, tmp_path, tracking_server
):
    tenant = seed_tenant(
        database,
        "acme",
        now,
        tmp_path,
        steps=[Step("email", subject="Hi", body_text=TEXT, body_html=HTML)],
    )
    with tenant_transaction(database.app, tenant.tenant_id) as conn:  # a real server's sender
        conn.execute(
            sa.text(
                "update app.sender_accounts set smtp_host = '127.0.0.1', smtp_port = :port, "
                "smtp_security = 'none'"
            ),
            {"port": smtp_server.port},
        )
    local = Tracking(tracking_server.tracking.tokens, "http://127.0.0.1:8090", public=False)
    assert send_due(database.app, smtp_server.server(), now, config=Config(tracking=local)).sent
    message = _message_to(smtp_server, "acme0@example.com")
    assert "127.0.0.1:8090" not in message.as_string()
    assert message["List-Unsubscribe"] == "<mailto:sales@acme.example?subject=unsubscribe>"


def _unreachable(tmp_path):
    """An engine for a server that is not there: every connection is refused."""
    return sa.create_engine(f"postgresql+psycopg://penguin_app@/x?host={tmp_path}/nowhere")


def test_with_the_database_away_requests_answer_and_shutdown_ends_in_bounded_time(
    database, now, tmp_path, monkeypatch
):
    from engine.tracking import server as server_module

    monkeypatch.setattr(server_module, "UNSUBSCRIBE_WAIT", 0.5)
    config = WriterConfig(retry_initial=0.1, retry_max=0.2, close_timeout=1.0)
    server = _start(database, now, config, app_engine=_unreachable(tmp_path))
    try:
        tracking = server.tracking
        tenant, message = uuid.uuid4(), uuid.uuid4()
        assert server.request("GET", tracking.url(Kind.OPEN, tenant, message))[0] == 200
        gone = tracking.url(Kind.UNSUBSCRIBE, tenant, message)
        status, _, page = server.request("POST", gone, body=b"List-Unsubscribe=One-Click")
        assert status == 503 and b"try again in a minute" in page.lower()
        status, _, body = server.request("GET", "/health")
        assert status == 503
        assert json.loads(body)["status"] == "database unavailable: events waiting"
    finally:
        started = time.monotonic()
        server.stop()
        stopped_in = time.monotonic() - started
    assert not server.thread.is_alive() and stopped_in < 20
    assert server.app.state.writer.dropped == 2  # the open and the unsubscribe, said in the log


def test_a_writer_stopped_by_a_bug_fails_its_waiters_and_says_so(
    database, smtp_server, now, tmp_path, monkeypatch
):
    async def broken(self, batch):
        raise RuntimeError()  # an error with no message, as a bug may raise

    monkeypatch.setattr(EventWriter, "_write", broken)
    server = _start(database, now)
    try:
        tenant = _sent(database, smtp_server, now, tmp_path, server.tracking)
        links = _links(_message_to(smtp_server, "acme0@example.com"))
        status, _, page = server.request("POST", links["unsubscribe"][0], body=b"")
        assert status == 503 and b"Something went wrong" in page
        assert server.request("GET", links["open"][0])[0] == 200  # the pixel still answers
        status, _, body = server.request("GET", "/health")
        assert (status, json.loads(body)["status"]) == (503, "event writer stopped")
    finally:
        server.stop()
    assert _events(database, tenant, "open", "unsubscribe") == []


def _refused_with(port: int, head: bytes, timeout: float = 10.0) -> tuple[bytes, float]:
    """What the server answers a client that sends `head` and then waits: the bytes it got
    until the server closed the connection, and how long that took."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):  # the server may close before it has read it all
            sock.sendall(head)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer, time.monotonic() - started


def test_an_oversized_header_gets_431_at_once_and_the_next_client_is_served(database, now):
    server = _start(database, now, limits=Limits(request_timeout=30))
    try:
        agent = b"Mozilla/5.0 " + b"x" * (64 * 1024)  # twice the bound, headers not even ended
        head = b"GET /health HTTP/1.1\r\nHost: t.example\r\nUser-Agent: " + agent
        answer, took = _refused_with(server.port, head)
        assert answer.startswith(b"HTTP/1.1 431 ") and took < 5  # not the 30 s request bound
        long_line = b"GET /o/" + b"A" * (64 * 1024) + b" HTTP/1.1\r\nHost: t.example\r\n\r\n"
        assert _refused_with(server.port, long_line)[0].startswith(b"HTTP/1.1 431 ")
        status, _, body = server.request("GET", "/health")
        assert status == 200 and json.loads(body)["status"] == "ok"
    finally:
        server.stop()


def test_a_request_that_never_ends_and_a_silent_connection_are_closed_within_the_bound(
    database, now
):
    server = _start(database, now, limits=Limits(request_timeout=0.5, idle_timeout=0.5))
    try:
        half = b"GET /health HTTP/1.1\r\nHost: t.example\r\nUser-Agent: slow"
        for head in (half, b""):
            answer, took = _refused_with(server.port, head)
            assert answer == b"" and took < 3, head
        # a keep-alive client that answered nothing after its response: closed too
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: t.example\r\n\r\n")
            started, answer = time.monotonic(), b""
            while chunk := sock.recv(65536):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200 ") and time.monotonic() - started < 3
        assert server.request("GET", "/health")[0] == 200
    finally:
        server.stop()


def test_after_a_key_rotation_old_links_still_record_and_new_links_carry_the_new_key(
    database, smtp_server, now, tmp_path
):
    new_key, stranger = "new-key-" + "n" * 40, "stranger-key-" + "s" * 40
    rotated = Tokens(new_key, previous=[KEY])
    server = _start(database, now, tokens=rotated)
    try:
        old = Tracking(Tokens(KEY), f"http://127.0.0.1:{server.port}")  # mail sent before
        tenant = _sent(database, smtp_server, now, tmp_path, old)
        links = _links(_message_to(smtp_server, "acme0@example.com"))
        assert server.request("GET", links["open"][0])[0] == 200
        gone = links["unsubscribe"][0]
        assert server.request("POST", gone, body=b"List-Unsubscribe=One-Click")[0] == 200
        new = server.tracking.url(Kind.OPEN, tenant.tenant_id, uuid.uuid4())
        token = new.rsplit("/", 1)[1]
        assert Tokens(new_key).read(Kind.OPEN, token) is not None
        assert Tokens(KEY).read(Kind.OPEN, token) is None  # signed with the new key only
        # a key in neither place, naming a real message of this tenant
        forged = Tracking(Tokens(stranger), server.tracking.public_url)
        token = _links(_message_to(smtp_server, "acme1@example.com"))["open"][0].rsplit("/", 1)[1]
        message_id = Tokens(KEY).read(Kind.OPEN, token).message_id
        for url in (
            forged.url(Kind.OPEN, tenant.tenant_id, message_id),
            forged.url(Kind.UNSUBSCRIBE, tenant.tenant_id, message_id),
        ):
            assert server.request("POST" if "/u/" in url else "GET", url)[0] == 404
        server.flushed()
    finally:
        server.stop()
    events = _events(database, tenant, "open", "unsubscribe")
    assert [(e.event_type, e.recipient_email) for e in events] == [
        ("open", "acme0@example.com"),
        ("unsubscribe", "acme0@example.com"),
    ]  # nothing of the stranger's links
