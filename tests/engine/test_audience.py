"""The demo audience: its rates over many messages, and its actions through the real paths
(the tracking server over HTTP, replies and bounces over SMTP into the sink's Maildir)."""

from __future__ import annotations

import time
import uuid
from collections import Counter

from engine.audience import HUMAN_AFTER, RATES, Audience, Outgoing, Rates, plan, read_outgoing
from engine.campaigns import Step
from engine.mailboxes.maildir import poll_maildir
from engine.senders import SmtpServer
from engine.sending.scheduler import Config, send_due
from engine.smtp_sink import SmtpSink
from tests.conftest import free_port
from tests.engine.test_provider_events import _query
from tests.engine.test_tracking_server import HTML, TEXT, _start
from tests.factories import seed_tenant


def _outgoing(n: int) -> Outgoing:
    return Outgoing(
        name=f"{n}",
        message_id=f"{uuid.UUID(int=n)}@acme.example",
        sender="sales@acme.example",
        recipient=f"r{n}@customers.example",
        subject="Hello",
        arrived=1_000_000.0,
        pixel="http://127.0.0.1:8090/o/t",
        links=("http://127.0.0.1:8090/c/a",),
        unsubscribe="http://127.0.0.1:8090/u/t",
    )


def test_the_audience_acts_at_its_rates_humans_after_machines_and_the_same_way_twice():
    messages = [_outgoing(n) for n in range(20_000)]
    kinds = Counter()
    for message in messages:
        actions = plan(message)
        assert actions == plan(message)  # decided by the Message-ID
        kinds.update(a.kind for a in actions)
        for action in actions:
            if action.kind in ("open", "click", "reply", "unsubscribe"):
                assert action.due >= message.arrived + HUMAN_AFTER
            if action.kind == "machine_open":
                assert action.due <= message.arrived + 3
    share = {kind: count / len(messages) for kind, count in kinds.items()}
    assert abs(share["bounce"] - RATES.bounce) < 0.004
    delivered = 1 - share["bounce"]
    for kind in ("open", "click", "reply", "auto_reply", "machine_open"):
        assert abs(share[kind] / delivered - getattr(RATES, kind)) < 0.015, kind
    assert 0 < share["unsubscribe"] < 0.01


def test_the_audience_opens_clicks_replies_unsubscribes_and_bounces_through_the_real_paths(
    database, now, tmp_path
):
    server = _start(database, now)
    try:
        with SmtpSink(tmp_path / "maildir", port=free_port()) as sink:
            rows = [
                ["ann@engaged.example", "Ann", "A", "Acme", "pro"],
                ["bob@engaged.example", "Bob", "B", "Acme", "pro"],
                ["cy@bouncing.example", "Cy", "C", "Acme", "pro"],
            ]
            step = Step("email", subject="Hello {{ first_name }}", body_text=TEXT, body_html=HTML)
            tenant = seed_tenant(database, "acme", now, tmp_path, rows=rows, steps=[step])
            config = Config(tracking=server.tracking)
            assert send_due(database.app, SmtpServer(sink.host, sink.port), now, config=config).sent
            later = lambda: time.time() + 3600  # noqa: E731 - everything is due
            everything = Rates(
                open=1, click=1, reply=1, auto_reply=1, bounce=0, unsubscribe=1, machine_open=1
            )
            engaged = Audience(
                sink.maildir,
                sink.host,
                sink.port,
                tmp_path / "engaged.json",
                rates=everything,
                domain="engaged.example",
                tracking_url=server.tracking.public_url,
                clock=later,
            )
            bouncing = Audience(
                sink.maildir,
                sink.host,
                sink.port,
                tmp_path / "bouncing.json",
                rates=Rates(bounce=1),
                domain="bouncing.example",
                clock=later,
            )
            assert (engaged.scan(), bouncing.scan()) == (2, 1)
            results = engaged.act_due() + bouncing.act_due()
            assert Counter(a.kind for a, _ in results) == {
                "machine_open": 2,
                "open": 2,
                "click": 2,
                "reply": 2,
                "auto_reply": 2,
                "unsubscribe": 2,
                "bounce": 1,
            }
            outcomes = {(a.kind, o) for a, o in results}
            assert {("open", "HTTP 200"), ("click", "HTTP 302"), ("unsubscribe", "HTTP 200")} <= (
                outcomes
            )
            server.flushed()
            report = poll_maildir(database.app, sink.maildir)
            assert dict(report.applied) == {"reply": 2, "auto_reply": 2, "bounce": 1}
            # A restarted audience does nothing twice.
            again = Audience(
                sink.maildir,
                sink.host,
                sink.port,
                tmp_path / "engaged.json",
                rates=everything,
                domain="engaged.example",
                clock=later,
            )
            again.scan()
            assert again.act_due() == []
    finally:
        server.stop()
    events = _query(
        database,
        tenant,
        "select m.recipient_email, e.event_type, e.is_machine from app.email_events e "
        "join app.sent_emails m on m.id = e.sent_email_id",
    )
    assert Counter((e.event_type, e.is_machine) for e in events) == {
        ("open", True): 2,
        ("open", False): 2,
        ("click", False): 2,
        ("reply", False): 2,
        ("auto_reply", False): 2,
        ("unsubscribe", False): 2,
        ("bounce", False): 1,
    }
    assert sorted(_query(database, tenant, "select email, reason from app.suppressions")) == [
        ("ann@engaged.example", "unsubscribe"),
        ("bob@engaged.example", "unsubscribe"),
        ("cy@bouncing.example", "bounce"),
    ]


def test_a_message_without_a_pixel_is_never_opened_and_foreign_links_are_not_followed(
    tmp_path,
):
    text_only = _outgoing(1)
    text_only = Outgoing(**{**text_only.__dict__, "pixel": None})
    for n in range(2_000):
        message = Outgoing(**{**text_only.__dict__, "message_id": f"{n}@acme.example"})
        assert not {a.kind for a in plan(message, Rates(open=1, click=1))} & {"open", "click"}
    mail = tmp_path / "new"
    mail.mkdir()
    (mail / "1.x").write_text(
        "From: sales@acme.example\nTo: r@customers.example\nMessage-ID: <m1@acme.example>\n"
        "X-RcptTo: r@customers.example\nContent-Type: text/html\n\n"
        '<a href="http://evil.example/c/abc">x</a><img src="http://127.0.0.1:8090/o/tok">'
    )
    found = read_outgoing(mail / "1.x", tracking_url="http://127.0.0.1:8090/")
    assert (found.pixel, found.links) == ("http://127.0.0.1:8090/o/tok", ())


def test_a_message_the_audience_cannot_read_is_skipped_not_fatal(tmp_path):
    mail = tmp_path / "new"
    mail.mkdir()
    (mail / "1.bad").write_bytes(
        b"From: sales@acme.example\nTo: r@customers.example\nMessage-ID: <m2@acme.example>\n"
        b"X-RcptTo: r@customers.example\nSubject: =?no-such-charset?q?Hi?=\n\nbody"
    )
    assert read_outgoing(mail / "1.bad") is None
    audience = Audience(mail.parent, "127.0.0.1", 1, tmp_path / "state.json")
    assert audience.scan() == 0


def test_the_demo_shows_every_outcome_whatever_the_rates_draw(database, now, tmp_path):
    """The demo's scripted recipients open, click, reply, unsubscribe, bounce and complain
    through the real paths, even when the rates draw nothing at all."""
    from engine import demo
    from engine.inbox import process_inbox

    server = _start(database, now)
    try:
        with SmtpSink(tmp_path / "maildir", port=free_port()) as sink:
            info = demo.load_demo(database, now)
            [outcome] = process_inbox(database.app, database.settings.uploads, now)
            assert outcome.result is not None and outcome.result.inserted == 40
            config = Config(tracking=server.tracking)
            smtp = SmtpServer(sink.host, sink.port)
            assert send_due(database.app, smtp, now, config=config).sent == 40
            nothing_drawn = Rates(
                open=0,
                click=0,
                reply=0,
                auto_reply=0,
                bounce=0,
                unsubscribe=0,
                machine_open=0,
                complaint=0,
            )
            audience = Audience(
                sink.maildir,
                sink.host,
                sink.port,
                tmp_path / "audience.json",
                rates=nothing_drawn,
                tracking_url=server.tracking.public_url,
                clock=lambda: time.time() + 3600,
            )
            assert audience.scan() == 40
            results = audience.act_due()
            assert {o for a, o in results if a.kind in ("open", "click", "unsubscribe")} <= {
                "HTTP 200",
                "HTTP 302",
            }
            server.flushed()
            report = poll_maildir(database.app, sink.maildir)
            assert dict(report.applied) == {
                "reply": 1,
                "auto_reply": 1,
                "bounce": 1,
                "complaint": 1,
            }
    finally:
        server.stop()
    events = _query(
        database,
        info,
        "select e.event_type, e.is_machine from app.email_events e",
    )
    assert Counter((e.event_type, e.is_machine) for e in events) == {
        ("open", True): 1,
        ("open", False): 4,
        ("click", False): 2,
        ("reply", False): 1,
        ("auto_reply", False): 1,
        ("unsubscribe", False): 1,
        ("bounce", False): 1,
        ("complaint", False): 1,
    }
    suppressed = _query(
        database,
        info,
        "select email, reason from app.suppressions order by email",
    )
    assert [tuple(s) for s in suppressed] == [
        ("barbara.liskov@customers.example", "unsubscribe"),
        ("ken.thompson@customers.example", "bounce"),
        ("radia.perlman@customers.example", "complaint"),
    ]


def test_loading_the_demo_again_leaves_its_data_as_it_is(database, now):
    """A second `penguin up --demo` on the same PENGUIN_HOME: no second CSV in the inbox,
    whether the first is still waiting there or already loaded."""
    from engine import demo
    from engine.inbox import pending_files, process_inbox

    uploads = database.settings.uploads
    first = demo.load_demo(database, now)
    assert first.csv_path is not None
    again = demo.load_demo(database, now)
    assert again == demo.DemoInfo(first.tenant_id, first.campaign_id, None)
    assert len(list(pending_files(uploads, now_timestamp=time.time() + 60))) == 1
    [loaded] = process_inbox(database.app, uploads, now)
    assert demo.load_demo(database, now).csv_path is None
    assert list(pending_files(uploads, now_timestamp=time.time() + 60)) == []
    batches = _query(
        database,
        first,
        "select id from app.upload_batches",
    )
    assert [b.id for b in batches] == [loaded.result.batch_id]
