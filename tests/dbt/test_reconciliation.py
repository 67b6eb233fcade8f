"""Every metric of the daily marts, recomputed independently in Python from the raw tables.

A generated dataset with planted edge cases (every status, hard and soft bounces, a bounce after
an open, refusals at RCPT, opens and clicks of messages whose outcome is unknown, duplicate
events, machine opens only, events before their send, sends and events around midnight in a
tenant with a non-UTC reporting time zone, several senders and recipient domains) is built with
dbt; each metric x day x campaign / step / sender / recipient domain / tenant cell must equal
what the definitions in metrics.md give, and every rate is within [0, 1]. Then late events and
new sends arrive and an incremental build must reach the same figures as the recomputation.
"""

from __future__ import annotations

import json
import random
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from engine.campaigns import Step
from engine.db import tenant_transaction
from engine.senders import create_sender
from tests.factories import dbt, people, seed_tenant

STEPS = [
    Step("email", subject="One", body_text="first"),
    Step("wait", wait=timedelta(days=1)),
    Step("email", subject="Two", body_text="second"),
    Step("wait", wait=timedelta(days=1)),
    Step("email", subject="Three", body_text="third"),
]
STATUSES = ["sent"] * 70 + ["bounced"] * 6 + ["failed"] * 8 + ["unknown"] * 5 + ["queued"] * 8
STATUSES += ["sending"] * 3
COUNTS = [
    *("sent", "failed", "unknown", "pending", "bounced_hard", "bounced_soft", "delivered"),
    *("unique_opens", "unique_clicks", "replies", "unsubscribes", "complaints"),
    *("total_opens", "total_clicks", "machine_opens"),
]
RATES = {
    "delivery_rate": ("delivered", "sent"),
    "bounce_rate": ("bounced", "sent"),
    "open_rate": ("unique_opens", "delivered"),
    "click_rate": ("unique_clicks", "delivered"),
    "reply_rate": ("replies", "delivered"),
    "unsubscribe_rate": ("unsubscribes", "delivered"),
    "complaint_rate": ("complaints", "delivered"),
}
GROUPS = {
    "campaign_daily": ("campaign_id",),
    "step_daily": ("campaign_id", "step_id"),
    "sender_daily": ("sender_account_id",),
    "campaign_sender_daily": ("campaign_id", "sender_account_id"),
    "recipient_domain_daily": ("recipient_domain",),
    "tenant_daily": (),
}

_ENROLLMENTS = sa.text(
    """
    select cc.id, cc.campaign_id, cc.contact_id, ct.email
    from app.campaign_contacts cc join app.contacts ct on ct.id = cc.contact_id
    order by ct.email
    """
)
_EMAIL_STEPS = sa.text(
    "select id from app.campaign_steps where step_type = 'email' order by step_order"
)
_INSERT_MESSAGE = sa.text(
    """
    insert into app.sent_emails
        (id, tenant_id, campaign_contact_id, campaign_id, step_id, contact_id, sender_account_id,
         recipient_email, subject, message_id, status, queued_at, sent_at, updated_at)
    values (:id, app.current_tenant_id(), :enrollment, :campaign, :step, :contact, :sender,
            :email, 'Hello', :message_id, :status, :queued_at, :sent_at, :updated_at)
    """
)
_INSERT_EVENT = sa.text(
    """
    insert into app.email_events
        (tenant_id, event_type, sent_email_id, contact_id, campaign_id, step_id, occurred_at,
         payload, dedup_key, machine_reason)
    select app.current_tenant_id(), :kind, m.id, m.contact_id, m.campaign_id, m.step_id, :at,
           cast(:payload as jsonb), :dedup, :machine
    from app.sent_emails m where m.id = :message
    """
)


def _messages(database, tenant, rng, start: datetime, senders, days: int, step_index=None):
    """Messages for the tenant's enrollments and email steps, on `days` days from `start`; the
    rows as inserted."""
    rows = []
    with tenant_transaction(database.app, tenant.tenant_id) as conn:
        enrollments = conn.execute(_ENROLLMENTS).all()
        steps = conn.execute(_EMAIL_STEPS).scalars().all()
        chosen = steps if step_index is None else [steps[step_index]]
        taken = set(
            conn.execute(sa.text("select campaign_contact_id, step_id from app.sent_emails"))
            .tuples()
            .all()
        )
        for enrollment in enrollments:
            for step in chosen:
                if (enrollment.id, step) in taken:
                    continue
                status = rng.choice(STATUSES)
                # Around midnight (UTC and the tenant's) often: the day boundary is the point.
                day = start + timedelta(days=rng.randrange(days))
                at = day + rng.choice(
                    [timedelta(hours=rng.uniform(0, 24)), timedelta(minutes=rng.uniform(-20, 20))]
                )
                sent_at = at if status in ("sent", "bounced", "unknown") else None
                row = {
                    "id": uuid.uuid4(),
                    "enrollment": enrollment.id,
                    "campaign": enrollment.campaign_id,
                    "step": step,
                    "contact": enrollment.contact_id,
                    "sender": rng.choice(senders),
                    "email": enrollment.email,
                    "message_id": f"{uuid.uuid4()}@recon.example",
                    "status": status,
                    "queued_at": at - timedelta(minutes=1),
                    "sent_at": sent_at,
                    # the engine's clock when it wrote the row (the marts' watermark)
                    "updated_at": datetime.now(UTC),
                }
                conn.execute(_INSERT_MESSAGE, row)
                rows.append(row)
    return rows


def _events(database, tenant, rng, messages, *, late: bool = False):
    """Events for `messages`, planted edge cases among them; `late`: weeks after the send."""
    written = []
    with tenant_transaction(database.app, tenant.tenant_id) as conn:
        for m in messages:
            if m["status"] not in ("sent", "bounced", "unknown"):  # unknown: it may have gone
                continue
            base = m["sent_at"] + (timedelta(days=rng.uniform(14, 30)) if late else timedelta())
            plan = []
            if rng.random() < 0.5:
                plan.append(("delivered", timedelta(seconds=2), None, {}))
            for _ in range(rng.choice([0, 0, 1, 2, 3])):  # human opens, duplicates included
                plan.append(("open", timedelta(hours=rng.uniform(-0.5, 48)), None, {}))
            for _ in range(rng.choice([0, 0, 0, 1, 2])):  # machine opens (some only those)
                plan.append(("open", timedelta(seconds=2), "Apple Mail Privacy Protection", {}))
            if rng.random() < 0.15:
                plan.append(("click", timedelta(hours=rng.uniform(0, 48)), None, {"url": "u"}))
            if rng.random() < 0.05:
                plan.append(("click", timedelta(seconds=3), "clicks on every link", {}))
            if rng.random() < 0.06:
                plan.append(("reply", timedelta(hours=rng.uniform(1, 72)), None, {}))
            if rng.random() < 0.03:
                plan.append(("auto_reply", timedelta(minutes=5), None, {}))
            if rng.random() < 0.06:  # soft or hard; some after an open
                hard = rng.random() < 0.5
                plan.append(("bounce", timedelta(hours=rng.uniform(0, 30)), None, {"hard": hard}))
            if rng.random() < 0.03:
                plan.append(("unsubscribe", timedelta(hours=rng.uniform(0, 48)), None, {}))
            if rng.random() < 0.02:
                plan.append(("complaint", timedelta(hours=rng.uniform(0, 48)), None, {}))
            for kind, after, machine, payload in plan:
                event = {
                    "kind": kind,
                    "message": m["id"],
                    "at": base + after,
                    "payload": json.dumps(payload),
                    "dedup": f"recon:{uuid.uuid4()}",
                    "machine": machine,
                }
                conn.execute(_INSERT_EVENT, event)
                written.append(event | {"payload": payload})
    return written


def _expected(messages, events, zones):
    """Every cell of every daily mart, from the definitions (metrics.md), in Python."""
    by_message = defaultdict(list)
    for e in events:
        by_message[e["message"]].append(e)
    cells = {name: defaultdict(lambda: defaultdict(int)) for name in GROUPS}
    for m in messages:
        mine = by_message[m["id"]]
        human = [e for e in mine if e["machine"] is None]
        # the recipient's action proves the message went out and arrived, whatever else
        acted = any(e["kind"] in ("open", "click") for e in human) or any(
            e["kind"] in ("reply", "unsubscribe", "complaint") for e in mine
        )
        sent = m["status"] in ("sent", "bounced") or acted
        has_hard = any(e["kind"] == "bounce" and e["payload"].get("hard") for e in mine)
        has_soft = any(e["kind"] == "bounce" and not e["payload"].get("hard") for e in mine)
        hard = not acted and (m["status"] == "bounced" or m["status"] == "sent" and has_hard)
        soft = not acted and m["status"] == "sent" and has_soft and not has_hard
        at = m["sent_at"] or m["queued_at"]
        day = at.astimezone(ZoneInfo(zones[m["tenant"]])).date()
        flags = {
            "sent": sent,
            "failed": m["status"] == "failed" and not sent,
            "unknown": m["status"] == "unknown" and not sent,
            "pending": m["status"] in ("queued", "sending") and not sent,
            "bounced_hard": hard,
            "bounced_soft": soft,
            "delivered": sent and not hard and not soft,
            "unique_opens": any(e["kind"] == "open" for e in human),
            "unique_clicks": any(e["kind"] == "click" for e in human),
            "replies": any(e["kind"] == "reply" for e in mine),
            "unsubscribes": any(e["kind"] == "unsubscribe" for e in mine),
            "complaints": any(e["kind"] == "complaint" for e in mine),
        }
        totals = {
            "total_opens": sum(e["kind"] == "open" for e in human),
            "total_clicks": sum(e["kind"] == "click" for e in human),
            "machine_opens": sum(e["kind"] == "open" and e["machine"] is not None for e in mine),
        }
        values = {
            "campaign_id": m["campaign"],
            "step_id": m["step"],
            "sender_account_id": m["sender"],
            "recipient_domain": m["email"].split("@")[1].lower(),
        }
        for name, dimensions in GROUPS.items():
            cell = cells[name][(day, m["tenant"], *(values[d] for d in dimensions))]
            for metric, flag in flags.items():
                cell[metric] += int(flag)
            for metric, total in totals.items():
                cell[metric] += total
    for by_cell in cells.values():
        for cell in by_cell.values():
            cell["bounced"] = cell["bounced_hard"] + cell["bounced_soft"]
            for rate, (numerator, denominator) in RATES.items():
                cell[rate] = cell[numerator] / cell[denominator] if cell[denominator] else None
                assert cell[rate] is None or 0 <= cell[rate] <= 1, (rate, cell)
            del cell["bounced"]
    return cells


def _marts(database):
    found = {}
    with database.analytics.connect() as conn:
        for name, dimensions in GROUPS.items():
            columns = ", ".join(["send_date", "tenant_id", *dimensions, *COUNTS, *RATES])
            rows = conn.execute(sa.text(f"select {columns} from analytics_marts.{name}")).all()
            keys = 2 + len(dimensions)
            found[name] = {
                tuple(r[:keys]): dict(zip([*COUNTS, *RATES], r[keys:], strict=True)) for r in rows
            }
    return found


def _compare(expected, found):
    for name in GROUPS:
        want = {key: dict(cell) for key, cell in expected[name].items()}
        got = found[name]
        assert set(got) == set(want), (name, set(got) ^ set(want))
        for key, cell in want.items():
            for metric, value in cell.items():
                actual = got[key][metric]
                assert actual == value, (name, key, metric, actual, value)


def test_every_metric_of_every_mart_equals_its_definition_before_and_after_late_data(
    database, now, tmp_path
):
    rng = random.Random(20261202)
    zones = {}
    messages, events = [], []
    start = now - timedelta(days=10)
    tenants = []
    for name, zone in (("west", "America/Los_Angeles"), ("utc", "UTC"), ("east", "Asia/Tokyo")):
        tenant = seed_tenant(database, name, now, tmp_path, rows=people(name, 25), steps=STEPS)
        with database.owner.begin() as conn:
            conn.execute(
                sa.text("update app.tenants set reporting_timezone = :zone where id = :id"),
                {"zone": zone, "id": tenant.tenant_id},
            )
        with tenant_transaction(database.app, tenant.tenant_id) as conn:
            second = create_sender(conn, f"second@{name}.example", daily_limit=1000)
        zones[tenant.tenant_id] = zone
        tenants.append((tenant, [tenant.sender_id, second, None]))
    for tenant, senders in tenants:
        rows = _messages(database, tenant, rng, start, senders, days=6, step_index=0)
        rows += _messages(database, tenant, rng, start + timedelta(days=1), senders, 6, 1)
        for row in rows:
            row["tenant"] = tenant.tenant_id
        messages += rows
        events += _events(database, tenant, rng, rows)
    # Planted: a message refused at RCPT that later also gets a soft bounce event; messages
    # opened or clicked, then bounced; messages of unknown outcome opened or clicked.
    assert sum(m["status"] == "bounced" for m in messages) > 5
    by_message = defaultdict(set)
    for e in events:
        by_message[e["message"]].add(e["kind"] if e["machine"] is None else "machine")
    acted = {"open", "click", "reply"}
    assert any(kinds >= {"bounce"} and kinds & acted for kinds in by_message.values())
    unknown = {m["id"] for m in messages if m["status"] == "unknown"}
    assert any(by_message[m] & acted for m in unknown)
    dbt(database, "build")
    _compare(_expected(messages, events, zones), _marts(database))

    # Late events for old messages, and the third step's sends: an incremental build.
    for tenant, senders in tenants:
        mine = [m for m in messages if m["tenant"] == tenant.tenant_id]
        events += _events(database, tenant, rng, rng.sample(mine, 15), late=True)
        rows = _messages(database, tenant, rng, start + timedelta(days=3), senders, 5, 2)
        for row in rows:
            row["tenant"] = tenant.tenant_id
        messages += rows
        events += _events(database, tenant, rng, rows)
    output = dbt(database, "build", "--select", "fct_sends+", "fct_email_events+")
    assert "PASS=" in output
    _compare(_expected(messages, events, zones), _marts(database))

    # The rates' data test fails a daily model whose rate leaves [0, 1].
    with database.owner.begin() as conn:
        conn.execute(
            sa.text(
                "update analytics_marts.tenant_daily set open_rate = 2 where tenant_day_id = "
                "(select min(tenant_day_id) from analytics_marts.tenant_daily)"
            )
        )
    output = dbt(
        database, "test", "--select", "tenant_daily,test_name:rates_between_0_and_1", check=False
    )
    assert "FAIL 1 rates_between_0_and_1_tenant_daily" in output, output[-3000:]
