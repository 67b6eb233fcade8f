"""Row-level security: the application role sees its tenant's rows and nothing else."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from engine.db import tenant_transaction
from engine.forecasts import refresh_forecasts
from engine.sending.scheduler import send_due
from tests.factories import people, seed_tenant

TENANT_TABLES = sa.text(
    """
    select c.table_name
    from information_schema.columns c
    join information_schema.tables t using (table_schema, table_name)
    where c.table_schema = 'app' and c.column_name = 'tenant_id' and t.table_type = 'BASE TABLE'
      -- the owner's record of each transaction's tenant: no other role may touch it at all
      and c.table_name <> 'tenant_bindings'
    order by c.table_name
    """
)

EXTRA_ROWS = [
    # Tables the seeded pipeline does not fill by itself.
    """insert into app.templates (tenant_id, name, subject, body_text)
       values (app.current_tenant_id(), 'intro', 'Hi', 'Hello')""",
    """insert into app.suppressions (tenant_id, email, reason)
       values (app.current_tenant_id(), 'gone@example.com', 'manual')""",
    """insert into app.email_events (tenant_id, event_type, sent_email_id, contact_id, campaign_id,
                                     step_id, occurred_at, dedup_key)
       select tenant_id, 'open', id, contact_id, campaign_id, step_id, now(), 'open:' || id
       from app.sent_emails""",
    """insert into app.inbound_messages (tenant_id, mailbox, source_key, kind, sent_email_id,
                                         received_at)
       select tenant_id, 'maildir:test', id::text, 'reply', id, now() from app.sent_emails""",
    """insert into app.mailbox_cursors (tenant_id, sender_account_id, uidvalidity, last_uid,
                                        updated_at)
       select tenant_id, id, 1, 1, now() from app.sender_accounts""",
    """insert into app.event_imports (tenant_id, provider, file_name, file_sha256, file_size,
                                      created_at)
       values (app.current_tenant_id(), 'ses', 'events.json', 'abc', 1, now())""",
    """insert into app.event_import_rejects (tenant_id, import_id, record, line_number, reason,
                                             raw_record)
       select tenant_id, id, 1, 1, 'not JSON', '{' from app.event_imports""",
    """insert into app.provider_messages (tenant_id, provider, provider_message_id, sent_email_id)
       select tenant_id, 'ses', 'ses-' || id, id from app.sent_emails""",
    """insert into app.campaign_approvals (tenant_id, campaign_id, approver, status)
       select tenant_id, id, 'compliance@example.com', 'pending' from app.campaigns""",
]


@pytest.fixture
def two_tenants(database, smtp_server, now, tmp_path):
    """Tenants A and B with a row in every tenant-owned table."""
    tenants = []
    for name in ("alpha", "bravo"):
        rows = [*people(name, 3), ["not-an-address", "Bad", "Row", "X", "pro"]]
        tenant = seed_tenant(database, name, now, tmp_path, rows=rows)
        send_due(database.app, smtp_server.server(), now, tenants=[tenant.tenant_id])
        with tenant_transaction(database.app, tenant.tenant_id) as conn:
            for statement in EXTRA_ROWS:
                conn.execute(sa.text(statement))
            refresh_forecasts(conn, now)  # send_forecasts and send_forecast_days
        tenants.append(tenant)
    return tenants


def test_every_tenant_table_forces_row_level_security(database):
    with database.owner.connect() as conn:
        tables = conn.execute(TENANT_TABLES).scalars().all()
        flags = conn.execute(
            sa.text(
                """select relname, relrowsecurity, relforcerowsecurity from pg_class
                   where relnamespace = 'app'::regnamespace and relname = any(:tables)"""
            ),
            {"tables": tables},
        ).all()
    assert len(tables) >= 15
    assert {(name, True, True) for name in tables} == set(flags)


def test_application_role_is_not_owner_superuser_or_bypassrls(database):
    with database.app.connect() as conn:
        role = conn.execute(
            sa.text(
                """select rolsuper, rolbypassrls,
                          exists (select from pg_tables where schemaname = 'app'
                                  and tableowner = current_user) as owns_tables
                   from pg_roles where rolname = current_user"""
            )
        ).one()
    assert role == (False, False, False)


def test_tenant_sees_only_its_own_rows_in_every_table(database, two_tenants):
    alpha, bravo = two_tenants
    with database.owner.connect() as conn:
        tables = conn.execute(TENANT_TABLES).scalars().all()
    for table in tables:
        with database.owner.connect() as conn:
            per_tenant = dict(
                conn.execute(
                    sa.text(f"select tenant_id, count(*) from app.{table} group by tenant_id")
                ).all()
            )
        # The check below could not fail on an empty table: both tenants must have rows.
        assert per_tenant.get(alpha.tenant_id, 0) > 0, f"{table} has no rows for alpha"
        assert per_tenant.get(bravo.tenant_id, 0) > 0, f"{table} has no rows for bravo"
        for me in (alpha, bravo):
            with tenant_transaction(database.app, me.tenant_id) as conn:
                visible = dict(
                    conn.execute(
                        sa.text(f"select tenant_id, count(*) from app.{table} group by tenant_id")
                    ).all()
                )
            assert visible == {me.tenant_id: per_tenant[me.tenant_id]}, table


def test_no_tenant_set_reads_nothing(database, two_tenants):
    with database.owner.connect() as conn:
        tables = conn.execute(TENANT_TABLES).scalars().all()
    # Before any tenant transaction, and on the same pooled connection after one.
    for _ in range(2):
        with database.app.connect() as conn:
            for table in tables:
                count = conn.execute(sa.text(f"select count(*) from app.{table}")).scalar()
                assert count == 0, table
        with tenant_transaction(database.app, two_tenants[0].tenant_id) as conn:
            assert conn.execute(sa.text("select count(*) from app.contacts")).scalar() > 0


def test_tenant_cannot_write_rows_for_another_tenant(database, two_tenants):
    alpha, bravo = two_tenants
    with (
        pytest.raises(sa.exc.ProgrammingError, match="row-level security"),
        tenant_transaction(database.app, alpha.tenant_id) as conn,
    ):
        conn.execute(
            sa.text("insert into app.contact_lists (tenant_id, name) values (:t, 'stolen')"),
            {"t": bravo.tenant_id},
        )


def test_tenant_cannot_update_another_tenants_rows(database, two_tenants):
    alpha, bravo = two_tenants
    with tenant_transaction(database.app, alpha.tenant_id) as conn:
        changed = conn.execute(
            sa.text("update app.contacts set company = 'hijacked' where tenant_id = :t"),
            {"t": bravo.tenant_id},
        ).rowcount
    assert changed == 0
    with database.owner.connect() as conn:
        hijacked = conn.execute(
            sa.text("select count(*) from app.contacts where company = 'hijacked'")
        ).scalar()
    assert hijacked == 0


@pytest.mark.parametrize(
    "statement",
    [
        "delete from app.email_events",
        "update app.email_events set event_type = 'click'",
        "update app.email_events set occurred_at = now()",
        "update app.email_events set payload = '{}', machine_reason = 'x'",
    ],
)
def test_email_events_are_append_only_for_the_application(database, two_tenants, statement):
    with (
        pytest.raises(sa.exc.ProgrammingError, match="permission denied"),
        tenant_transaction(database.app, two_tenants[0].tenant_id) as conn,
    ):
        conn.execute(sa.text(statement))


def test_the_application_flags_machine_events_of_its_own_tenant_only(database, two_tenants):
    """The one column it may change (the tracking server's "every link at once" rule)."""
    first, second = two_tenants
    with tenant_transaction(database.app, first.tenant_id) as conn:
        flagged = (
            conn.execute(
                sa.text(
                    "update app.email_events set machine_reason = 'scanner' returning tenant_id"
                )
            )
            .scalars()
            .all()
        )
    assert flagged and set(flagged) == {first.tenant_id}
    with tenant_transaction(database.app, second.tenant_id) as conn:
        assert (
            conn.execute(sa.text("select count(*) from app.email_events where is_machine")).scalar()
            == 0
        )


def test_analytics_role_reads_every_tenant_but_cannot_write(database, two_tenants):
    with database.analytics.connect() as conn:
        tenants = conn.execute(
            sa.text("select count(distinct tenant_id) from app.contacts")
        ).scalar()
        assert tenants == 2
        with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
            conn.execute(sa.text("update app.contacts set company = 'x'"))


def test_a_tenant_cannot_reference_another_tenants_rows(database, two_tenants):
    alpha, bravo = two_tenants
    with database.owner.connect() as conn:
        bravo_contact = conn.execute(
            sa.text("select id from app.contacts where tenant_id = :t limit 1"),
            {"t": bravo.tenant_id},
        ).scalar()
    # Foreign-key checks see every row, whatever the policies: the key must carry tenant_id.
    with (
        pytest.raises(sa.exc.IntegrityError, match="violates foreign key constraint"),
        tenant_transaction(database.app, alpha.tenant_id) as conn,
    ):
        conn.execute(
            sa.text(
                "insert into app.contact_list_members (tenant_id, list_id, contact_id) "
                "select tenant_id, id, :contact from app.contact_lists"
            ),
            {"contact": bravo_contact},
        )
