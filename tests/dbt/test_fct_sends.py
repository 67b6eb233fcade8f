"""dbt models built for real against the test database."""

from __future__ import annotations

import re
from datetime import timedelta

import sqlalchemy as sa

from engine.sending.scheduler import send_due
from tests.factories import dbt, seed_tenant


def _fct_count(database) -> int:
    with database.analytics.connect() as conn:
        return conn.execute(sa.text("select count(*) from analytics_marts.fct_sends")).scalar()


def test_incremental_run_picks_up_rows_committed_out_of_order(database, smtp_server, now, tmp_path):
    early = seed_tenant(database, "early", now, tmp_path)
    seed_tenant(database, "late", now, tmp_path, enroll=False)
    send_due(database.app, smtp_server.server(), now, tenants=[early.tenant_id])
    dbt(database, "build")
    assert _fct_count(database) == 3

    # A worker whose batch clock is older than the newest loaded row commits afterwards.
    from engine.db import tenant_transaction
    from engine.enrollment import enroll_active_campaigns
    from engine.tenants import tenant_id

    late = tenant_id(database.app, "late")
    earlier = now - timedelta(minutes=30)
    with tenant_transaction(database.app, late) as conn:
        enroll_active_campaigns(conn, earlier)
    send_due(database.app, smtp_server.server(), earlier, tenants=[late])
    output = dbt(database, "build", "--select", "fct_sends+")
    assert "PASS=" in output
    assert _fct_count(database) == 6


def test_status_changes_after_the_first_load_are_merged(database, smtp_server, now, tmp_path):
    tenant = seed_tenant(database, "acme", now, tmp_path)
    smtp_server.handler.refuse["acme1@example.com"] = "451 4.3.0 Try later"
    send_due(database.app, smtp_server.server(), now)
    dbt(database, "build")
    del smtp_server.handler.refuse["acme1@example.com"]
    # The retry falls due after its backoff (five minutes and some jitter).
    send_due(
        database.app, smtp_server.server(), now + timedelta(minutes=7), tenants=[tenant.tenant_id]
    )
    dbt(database, "build", "--select", "fct_sends+")
    with database.analytics.connect() as conn:
        statuses = conn.execute(
            sa.text("select send_status, count(*) from analytics_marts.fct_sends group by 1")
        ).all()
        daily = conn.execute(
            sa.text("select sent, pending from analytics_marts.campaign_daily")
        ).one()
    assert dict(statuses) == {"sent": 3}
    assert tuple(daily) == (3, 0)


def test_dbt_by_hand_documents_the_project_and_reports_source_freshness(
    database, smtp_server, now, tmp_path
):
    from engine.tracking.events import Event, write

    tenant = seed_tenant(database, "acme", now, tmp_path)
    send_due(database.app, smtp_server.server(), now)
    with database.analytics.connect() as conn:
        message = conn.execute(sa.text("select id from app.sent_emails limit 1")).scalar_one()
    write(database.app, [Event("open", tenant.tenant_id, message, now, "open:1")])
    dbt(database, "build")
    docs = dbt(database, "docs", "generate")
    assert "Catalog written" in docs
    catalog = database.settings.home / "dbt-target" / "catalog.json"
    assert "campaign_daily" in catalog.read_text()
    freshness = dbt(database, "source", "freshness")
    # The event was recorded just now; the messages' `updated_at` is the fixture's clock, days
    # before: later than the sources' warn_after of one day.
    assert re.search(r"PASS freshness of app\.email_events", freshness), freshness
    assert re.search(r"WARN freshness of app\.sent_emails", freshness), freshness


_CONTACT_ROWS = sa.text(
    """
    select email, lists, tags, messages_sent, messages_opened, engagement_score,
           last_open_at, updated_at
    from analytics_marts.dim_contacts order by email
    """
)


def test_dim_contacts_merges_what_changed_as_a_full_rebuild_has_it(
    database, smtp_server, now, tmp_path
):
    from engine.tracking.events import Event, write

    tenant = seed_tenant(database, "acme", now, tmp_path)
    send_due(database.app, smtp_server.server(), now)
    with database.owner.begin() as conn:
        # Two contacts and their messages changed long before the newest (beyond the
        # watermarks' lookback), so only what happens to them next brings them back.
        for table, column in (("contacts", "email"), ("sent_emails", "recipient_email")):
            conn.execute(
                sa.text(f"update app.{table} set updated_at = :t where {column} <> :newest"),
                {"t": now - timedelta(days=1), "newest": "acme2@example.com"},
            )
    dbt(database, "build")
    later = now + timedelta(hours=1)
    with database.owner.begin() as conn:
        ids = dict(conn.execute(sa.text("select email, id from app.contacts")).all())
        message = conn.execute(
            sa.text("select id from app.sent_emails where contact_id = :c"),
            {"c": ids["acme0@example.com"]},
        ).scalar_one()
        # No trace on the contacts: one leaves the list, the list is renamed.
        conn.execute(
            sa.text("delete from app.contact_list_members where contact_id = :c"),
            {"c": ids["acme1@example.com"]},
        )
        conn.execute(sa.text("update app.contact_lists set name = 'prospects'"))
        conn.execute(
            sa.text("update app.contacts set tags = '{vip}', updated_at = :t where id = :c"),
            {"t": later, "c": ids["acme2@example.com"]},
        )
    write(database.app, [Event("open", tenant.tenant_id, message, later, "open:1")])

    dbt(database, "build", "--select", "fct_sends+")
    with database.analytics.connect() as conn:
        merged = conn.execute(_CONTACT_ROWS).all()
    assert [(r.email, r.lists, r.tags, r.messages_opened) for r in merged] == [
        ("acme0@example.com", ["prospects"], [], 1),
        ("acme1@example.com", [], [], 0),
        ("acme2@example.com", ["prospects"], ["vip"], 0),
    ]
    assert merged[0].engagement_score == 5 and merged[0].last_open_at == later
    dbt(database, "build", "--select", "dim_contacts", "--full-refresh")
    with database.analytics.connect() as conn:
        assert conn.execute(_CONTACT_ROWS).all() == merged
