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


#: The incremental marts, whole, as comparable rows: everything but what says when and by which
#: build a row was written.
_MARTS = ("fct_sends", "fct_email_events", "campaign_daily", "engagement_daily", "dim_contacts")
_MART_ROWS = """
    select to_jsonb(m) - 'loaded_at' - 'build_xmin' as row
    from analytics_marts.{mart} as m order by to_jsonb(m) - 'loaded_at' - 'build_xmin'
"""


def _marts(database) -> dict[str, list[dict]]:
    with database.analytics.connect() as conn:
        return {
            mart: conn.execute(sa.text(_MART_ROWS.format(mart=mart))).scalars().all()
            for mart in _MARTS
        }


def test_incremental_builds_take_every_committed_change_whatever_time_it_carries(
    database, smtp_server, now, tmp_path
):
    """Rows are found in commit order, not by the times their writers put on them: a tenant's
    sends with a `now` a day ahead, then another tenant's sends at the real time; a second
    `penguin generate` (rows timed as if they happened, days back); an event flagged as a
    machine's after it was recorded. The incremental build then holds exactly what a full
    refresh of the same data holds."""
    from engine.generate import Shape, generate
    from engine.sending.scheduler import send_due as send

    ahead = seed_tenant(database, "ahead", now, tmp_path)
    behind = seed_tenant(database, "behind", now, tmp_path)
    send(database.app, smtp_server.server(), now + timedelta(days=1), tenants=[ahead.tenant_id])
    generate(database, Shape(tenants=1, contacts=60, sends=200, events=600, days=4, seed=31), now)
    dbt(database, "build", "--exclude-resource-type", "unit_test")

    send(database.app, smtp_server.server(), now, tenants=[behind.tenant_id])
    generate(database, Shape(tenants=1, contacts=60, sends=200, events=600, days=4, seed=32), now)
    with database.owner.begin() as conn:
        conn.execute(
            sa.text(
                "update app.email_events set machine_reason = 'link scanner' where id = ("
                "select min(id) from app.email_events where event_type = 'open' "
                "and machine_reason is null)"
            )
        )
    dbt(database, "build", "--exclude-resource-type", "unit_test")
    incremental = _marts(database)

    with database.analytics.connect() as conn:
        sources = conn.execute(
            sa.text(
                "select (select count(*) from app.sent_emails), "
                "(select count(*) from app.email_events), "
                "(select count(*) from app.sent_emails where status in ('sent', 'bounced'))"
            )
        ).one()
        behind_sent = conn.execute(
            sa.text(
                "select sum(sent) from analytics_marts.campaign_daily where tenant_id = :t"
            ),
            {"t": behind.tenant_id},
        ).scalar()
    assert len(incremental["fct_sends"]) == sources[0]
    assert len(incremental["fct_email_events"]) == sources[1]
    assert sum(row["sent"] for row in incremental["campaign_daily"]) == sources[2]
    assert behind_sent == 3
    flagged = [r for r in incremental["fct_email_events"] if r["machine_reason"] == "link scanner"]
    assert len(flagged) == 1 and flagged[0]["is_machine"]

    dbt(database, "build", "--exclude-resource-type", "unit_test", "--full-refresh")
    assert _marts(database) == incremental


#: A restore from another server's dump, as the marts see it: pg_dump keeps every `change_xid`
#: and `build_xmin`, while the new server counts its transactions from its own start, here a
#: million behind the server dumped.
_RESTORED_FROM_AHEAD = [
    "alter table app.sent_emails disable trigger sent_emails_change_xid",
    "update app.sent_emails set change_xid = cast(:ahead as xid8)",
    "alter table app.sent_emails enable always trigger sent_emails_change_xid",
    "update analytics_marts.fct_sends set build_xmin = cast(:ahead as xid8)",
]


def test_after_a_restore_from_a_server_further_on_every_change_still_reaches_the_marts(
    database, smtp_server, now, tmp_path
):
    """A database restored from a dump of a server whose transaction count was further on: the
    first build rebuilds the marts whole (their watermark is beyond anything this server has
    reached) and takes the sends made since; the rows that kept the other server's ids are not
    taken again by every build after it."""
    first = seed_tenant(database, "first", now, tmp_path)
    second = seed_tenant(database, "second", now, tmp_path)
    send_due(database.app, smtp_server.server(), now, tenants=[first.tenant_id])
    build = ("build", "--select", "+fct_sends", "--exclude-resource-type", "unit_test")
    dbt(database, *build)
    with database.owner.begin() as conn:
        ahead = conn.execute(sa.text("select pg_current_xact_id()::text::bigint + 1000000"))
        ahead = str(ahead.scalar_one())
        for statement in _RESTORED_FROM_AHEAD:
            conn.execute(sa.text(statement), {"ahead": ahead})

    send_due(database.app, smtp_server.server(), now, tenants=[second.tenant_id])
    dbt(database, *build)
    newest = sa.text("select max(loaded_at) from analytics_marts.fct_sends")
    with database.analytics.connect() as conn:
        loaded = conn.execute(newest).scalar_one()
    assert _fct_count(database) == 6

    dbt(database, *build)
    with database.analytics.connect() as conn:
        assert conn.execute(newest).scalar_one() == loaded


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
