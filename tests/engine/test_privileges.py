"""Least privilege, tried as an attacker would: what each role can create, resolve, read and
switch to, and what the database's keys reveal about other tenants."""

from __future__ import annotations

import psycopg
import pytest
import sqlalchemy as sa

from engine import migrate
from engine.config import ANALYTICS_ROLE, APP_ROLE, DASHBOARDS_ROLE, ROLES
from engine.db import tenant_transaction
from engine.ingest import ingest_file
from engine.senders import ADDRESS_INDEX
from engine.tenants import all_tenants, create_tenant
from tests.engine.test_row_level_security import two_tenants  # noqa: F401 (a fixture)
from tests.factories import people, write_csv


def _libpq(database, role: str) -> str:
    """A plain libpq connection string for `role`: no options of ours, only the role's own."""
    return database.role_url(role, None).set(drivername="postgresql").render_as_string(False)


@pytest.mark.parametrize("role", ROLES)
def test_no_role_but_the_owner_can_create_schemas_or_objects_in_public(database, role):
    with psycopg.connect(_libpq(database, role), autocommit=True) as conn:
        # The privileges themselves, not the dashboards' read-only default, must refuse.
        conn.execute("set default_transaction_read_only = off")
        for statement in (
            f"create schema {role}",  # the schema its own "$user" would once have resolved to
            "create table public.planted (x int)",
            "create function public.lower(text) returns text language sql as 'select $1'",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)


def test_the_analytics_role_creates_only_in_the_analytics_schemas(database):
    with psycopg.connect(_libpq(database, ANALYTICS_ROLE), autocommit=True) as conn:
        for schema in migrate.ANALYTICS_SCHEMAS:
            conn.execute(f"create table {schema}.probe (x int)")
            conn.execute(f"drop table {schema}.probe")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("create table app.probe (x int)")


@pytest.mark.parametrize("role", ROLES)
def test_every_role_resolves_names_in_the_catalog_and_app_only(database, role):
    with psycopg.connect(_libpq(database, role)) as conn:
        assert conn.execute("show search_path").fetchone() == ("pg_catalog, app",)


def test_every_function_of_the_app_schema_has_a_fixed_search_path(database):
    with database.owner.connect() as conn:
        loose = conn.execute(
            sa.text(
                """
                select p.proname from pg_catalog.pg_proc p
                where p.pronamespace = 'app'::regnamespace
                  and not exists (
                      select from unnest(coalesce(p.proconfig, '{}')) c
                      where c like 'search_path=%'
                  )
                """
            )
        ).scalars()
        assert list(loose) == []


def _plant(conn, schema: str, definition: str) -> None:
    """As the owner: a schema in the database, usable by everyone, holding `definition`."""
    conn.execute(sa.text(f'create schema "{schema}"'))
    conn.execute(sa.text(f'grant usage on schema "{schema}" to public'))
    conn.execute(sa.text(definition.format(schema=schema)))


def test_an_operator_planted_in_a_schema_named_after_the_app_role_is_never_used(
    database, now, tmp_path
):
    # Before revision 0004 the analytics role could create this schema; the application role's
    # default search path ("$user", public) then resolved `'upload:' || uuid` to it.
    with database.owner.begin() as conn:
        _plant(
            conn,
            APP_ROLE,
            """
            create function "{schema}".hijack(text, uuid) returns text language plpgsql
            as $$ begin raise exception 'hijacked'; end $$;
            create operator "{schema}".|| (leftarg = text, rightarg = uuid,
                                           function = "{schema}".hijack);
            """,
        )
    path = write_csv(tmp_path / "leads.csv", people("lead", 3))
    [(tenant_id, _)] = all_tenants(database.app)
    result = ingest_file(database.app, tenant_id, path, "leads", now)
    assert result.inserted == 3


def test_a_function_planted_in_a_schema_named_after_the_owner_never_runs_in_upgrade(database):
    with database.owner.begin() as conn:
        owner = conn.execute(sa.text("select current_user")).scalar_one()
        # An exact match for format(text, name) beats pg_catalog's format(text, variadic "any").
        _plant(
            conn,
            owner,
            """
            create function "{schema}".format(text, name) returns text language plpgsql
            as $$ begin raise exception 'hijacked'; end $$;
            create function "{schema}".current_database() returns name language plpgsql
            as $$ begin raise exception 'hijacked'; end $$;
            """,
        )
    assert migrate.upgrade(database) == migrate.head_revision()
    with database.owner.connect() as conn:
        bypass = conn.execute(
            sa.text("select rolbypassrls from pg_roles where rolname = :r"), {"r": APP_ROLE}
        ).scalar_one()
    assert bypass is False


def test_a_transaction_cannot_switch_to_another_tenant(database, two_tenants):  # noqa: F811
    alpha, bravo = two_tenants
    with tenant_transaction(database.app, alpha.tenant_id) as conn:
        # The old way of setting the tenant changes nothing any more.
        conn.execute(
            sa.text("select set_config('app.tenant_id', :t, true)"), {"t": str(bravo.tenant_id)}
        )
        tenants = conn.execute(sa.text("select distinct tenant_id from app.contacts")).scalars()
        assert list(tenants) == [alpha.tenant_id]
        # Nor does a savepoint rolled back: the binding predates it.
        conn.execute(sa.text("savepoint s"))
        conn.execute(sa.text("rollback to savepoint s"))
        assert conn.execute(sa.text("select app.current_tenant_id()")).scalar() == alpha.tenant_id
        with pytest.raises(sa.exc.ProgrammingError, match="cannot be switched"):
            with conn.begin_nested():
                conn.execute(sa.text("select app.bind_tenant(:t)"), {"t": bravo.tenant_id})
        with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
            with conn.begin_nested():
                conn.execute(sa.text("delete from app.tenant_bindings"))
        with pytest.raises(sa.exc.ProgrammingError, match="inside a tenant's transaction"):
            with conn.begin_nested():
                conn.execute(sa.text("select * from app.tenant_directory()"))
        # Binding the same tenant again is harmless.
        conn.execute(sa.text("select app.bind_tenant(:t)"), {"t": alpha.tenant_id})
        assert conn.execute(sa.text("select name from app.tenants")).scalars().all() == ["alpha"]


def test_outside_a_tenant_transaction_the_app_role_sees_no_tenant_rows(database, two_tenants):  # noqa: F811
    with database.app.connect() as conn:
        assert conn.execute(sa.text("select count(*) from app.tenants")).scalar() == 0
        assert conn.execute(sa.text("select count(*) from app.contacts")).scalar() == 0
        # ... but may look tenants up by name, to choose the one a transaction acts for.
        names = conn.execute(sa.text("select name from app.tenant_directory()")).scalars()
        assert set(names) >= {"alpha", "bravo"}


def test_an_unknown_tenant_cannot_be_bound(database):
    import uuid

    with pytest.raises(sa.exc.IntegrityError, match="no tenant with id"):
        with tenant_transaction(database.app, uuid.uuid4()):
            pass


UNIQUE_INDEXES = sa.text(
    """
    select c.relname as table_name, i.relname as index_name,
           array(select a.attname from unnest(x.indkey) k
                 join pg_attribute a on a.attrelid = c.oid and a.attnum = k) as columns,
           x.indisprimary
    from pg_index x
    join pg_class i on i.oid = x.indexrelid
    join pg_class c on c.oid = x.indrelid
    where c.relnamespace = 'app'::regnamespace and x.indisunique
      and exists (select from pg_attribute a
                  where a.attrelid = c.oid and a.attname = 'tenant_id' and not a.attisdropped)
    """
)


def test_every_unique_key_of_a_tenant_table_includes_the_tenant(database):
    """Otherwise "duplicate key" answers whether another tenant has that value. Surrogate
    primary keys (a random UUID or an identity) are the exception: nothing to guess there.
    So is a sender address (migration 0019), on purpose: it belongs to one tenant, and the
    refusal of a second says only that some tenant has it, never which."""
    with database.owner.connect() as conn:
        indexes = conn.execute(UNIQUE_INDEXES).all()
    assert len(indexes) > 15
    leaky = [
        (row.table_name, row.index_name)
        for row in indexes
        if "tenant_id" not in row.columns
        and not (row.indisprimary and row.columns in (["id"], ["xid"]))
        and row.index_name != ADDRESS_INDEX
    ]
    assert leaky == []


def test_another_tenants_message_id_is_not_revealed_by_a_duplicate_key_error(
    database,
    two_tenants,  # noqa: F811
):
    alpha, bravo = two_tenants
    with tenant_transaction(database.app, bravo.tenant_id) as conn:
        theirs = conn.execute(sa.text("select message_id from app.sent_emails limit 1")).scalar()
    # A Message-ID is in every header bravo's recipients see; alpha may hold the same value.
    with tenant_transaction(database.app, alpha.tenant_id) as conn:
        changed = conn.execute(
            sa.text(
                "update app.sent_emails set message_id = :m "
                "where id = (select id from app.sent_emails limit 1)"
            ),
            {"m": theirs},
        ).rowcount
    assert changed == 1


def test_tenant_names_that_would_share_smtp_variables_are_refused(database):
    create_tenant(database.owner, "acme-eu")
    with pytest.raises(ValueError, match="too close to the existing tenant 'acme-eu'"):
        create_tenant(database.owner, "acme_eu")


@pytest.mark.parametrize("name", ["acme\n", "acme\nother", "Acme"])
def test_a_tenant_name_with_a_newline_or_capitals_is_refused(database, name):
    """`$` also matches before a final newline: "acme\n" would be a second tenant whose SMTP
    variables and inbox folder no one could name."""
    with pytest.raises(ValueError, match="is not valid"):
        create_tenant(database.owner, name)
    assert [n for _, n in all_tenants(database.owner) if n.startswith(("acme", "Acme"))] == []


@pytest.mark.xdist_group("built_pipeline")  # with the other tests of the session's pipeline
def test_the_dashboards_role_reads_the_marts_and_nothing_else(built_pipeline):
    database = built_pipeline.database
    with psycopg.connect(_libpq(database, DASHBOARDS_ROLE)) as conn:
        assert conn.execute("select count(*) from analytics_marts.campaign_daily").fetchone()[0]
        assert conn.execute("select count(*) from analytics_marts.fct_upload_batches").fetchone()
        conn.rollback()
        for statement in (
            "select count(*) from app.contacts",
            "select count(*) from analytics_staging.stg_app__sent_emails",
            "select * from app.tenant_directory()",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
            conn.rollback()
        # Read-only whatever grant might slip in: even a temporary table cannot be written ...
        for statement in (
            "create temporary table t (x int)",
            "delete from analytics_marts.campaign_daily",
        ):
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                conn.execute(statement)
            conn.rollback()
        # ... and with read-only switched off, the grants refuse.
        conn.execute("set default_transaction_read_only = off")
        conn.commit()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("delete from analytics_marts.campaign_daily")


def test_the_operator_role_changes_a_campaigns_status_in_its_own_tenant_only(
    database,
    two_tenants,  # noqa: F811
):
    alpha, bravo = two_tenants
    with database.owner.begin() as conn:  # their campaigns have sent everything: relaunch
        conn.execute(sa.text("update app.campaigns set status = 'active'"))
    with database.operator.connect() as conn:  # no tenant bound: nothing is visible
        assert conn.execute(sa.text("select count(*) from app.campaigns")).scalar() == 0
    with tenant_transaction(database.operator, alpha.tenant_id) as conn:
        assert conn.execute(sa.text("select count(*) from app.campaigns")).scalar() == 1
        changed = conn.execute(
            sa.text("update app.campaigns set status = 'paused' where id = any(:ids)"),
            {"ids": [alpha.campaign_id, bravo.campaign_id]},
        ).rowcount
        assert changed == 1  # its own; the other tenant's is not there
        conn.rollback()
    # it pauses and resumes, nothing else: no launching a draft past the launch's checks
    for before, after in (("active", "completed"), ("draft", "active"), ("completed", "paused")):
        with tenant_transaction(database.owner, alpha.tenant_id) as conn:
            conn.execute(sa.text("update app.campaigns set status = :s"), {"s": before})
        with tenant_transaction(database.operator, alpha.tenant_id) as conn:
            with pytest.raises(sa.exc.ProgrammingError, match=f"not {before} to {after}"):
                conn.execute(sa.text("update app.campaigns set status = :s"), {"s": after})
    refused = (
        "update app.campaigns set name = 'renamed'",
        "update app.campaign_settings set daily_limit = 1",
        "insert into app.sent_emails (tenant_id) values (app.current_tenant_id())",
        "delete from app.campaign_contacts",
        "select smtp_password_env from app.sender_accounts",
        # what only the forecast read, before it moved to the analytics runs (migration 0017)
        "select count(*) from app.contacts",
        "select count(*) from app.sent_emails",
        "select count(*) from app.email_events",
        "select daily_limit from app.sender_accounts",
        "select count(*) from app.send_forecasts",
        "select * from app.tenant_directory()",
        "select * from app.tenant_bindings",
        "select count(*) from analytics_marts.campaign_daily",
    )
    for statement in refused:
        with tenant_transaction(database.operator, alpha.tenant_id) as conn:
            with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
                conn.execute(sa.text(statement))


def test_a_role_that_changes_its_own_defaults_does_not_change_the_engines_connections(database):
    # PostgreSQL lets a role ALTER ROLE itself SET ...; the engine asks for its settings on
    # every connection instead of trusting the role's defaults.
    roles_settings = {
        APP_ROLE: "alter role penguin_app set search_path = public",
        DASHBOARDS_ROLE: "alter role penguin_dashboards set default_transaction_read_only = off",
    }
    try:
        for role, statement in roles_settings.items():
            with psycopg.connect(_libpq(database, role), autocommit=True) as conn:
                conn.execute("set default_transaction_read_only = off")
                conn.execute(statement)
        database.dispose()
        with database.app.connect() as conn:
            assert conn.execute(sa.text("show search_path")).scalar() == "pg_catalog,app"
        with database.dashboards.connect() as conn:
            assert conn.execute(sa.text("show transaction_read_only")).scalar() == "on"
    finally:  # roles are shared by every database of the test server
        with database.owner.begin() as conn:
            conn.execute(sa.text("alter role penguin_app set search_path = pg_catalog, app"))
            conn.execute(
                sa.text("alter role penguin_dashboards set default_transaction_read_only = on")
            )


@pytest.mark.parametrize("role", ROLES)
def test_only_the_roles_that_stage_rows_may_create_temporary_tables(database, role):
    """The engine stages uploads and dbt its incremental merges in temporary tables; the
    dashboards and the operator need none, so they get none, read-only or not."""
    with psycopg.connect(_libpq(database, role), autocommit=True) as conn:
        conn.execute("set default_transaction_read_only = off")
        if role in migrate.TEMP_ROLES:
            conn.execute("create temporary table staged (x int)")
        else:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("begin read write")
                conn.execute("create temporary table planted (x int)")


def test_a_role_left_with_temporary_tables_is_named_with_the_statement_that_revokes_it(database):
    """What `penguin up` and `penguin db upgrade` print when the revocation could not take
    (the migrating role does not own an external server's database)."""
    name = database.server.dbname
    with database.owner.begin() as conn:
        conn.execute(sa.text(f'grant temporary on database "{name}" to penguin_dashboards'))
    (warning,) = migrate.stray_schema_warnings(database)
    assert warning.startswith("role penguin_dashboards may create temporary tables")
    with database.owner.begin() as conn:
        conn.execute(sa.text(warning.split("run ", 1)[1]))
    assert migrate.stray_schema_warnings(database) == []


def test_the_dashboards_own_connection_stays_read_only_whatever_its_role_or_session_says(
    database, monkeypatch
):
    """As someone holding the dashboards' password would try: change the role's defaults
    (a role may ALTER ROLE itself SET ...), or switch a pooled connection's session to read
    write and commit it; the dashboards' next transaction still begins read-only."""
    import streamlit as st

    from dashboards import data

    monkeypatch.setenv("DATABASE_URL", database.settings.database_url)
    monkeypatch.setenv("PENGUIN_HOME", str(database.settings.home))
    st.cache_resource.clear()
    try:
        with psycopg.connect(_libpq(database, DASHBOARDS_ROLE), autocommit=True) as conn:
            conn.execute("set default_transaction_read_only = off")
            conn.execute("alter role penguin_dashboards set default_transaction_read_only = off")
        engine = data._engine()
        with engine.connect() as conn:  # a statement slipped into a page's session
            conn.execute(sa.text("set session characteristics as transaction read write"))
            conn.commit()
        with engine.connect() as conn:  # the same pooled connection, the next page's read
            assert conn.execute(sa.text("show transaction_read_only")).scalar() == "on"
            with pytest.raises(sa.exc.DBAPIError, match="read-only transaction"):
                conn.execute(sa.text("create temporary table planted (x int)"))
    finally:  # roles are shared by every database of the test server
        st.cache_resource.clear()
        with database.owner.begin() as conn:
            conn.execute(
                sa.text("alter role penguin_dashboards set default_transaction_read_only = on")
            )


def _last_analyzed(database, table: str):
    with database.owner.connect() as conn:
        return conn.execute(
            sa.text(
                "select greatest(last_analyze, last_autoanalyze) from pg_stat_user_tables "
                "where schemaname = 'app' and relname = :table"
            ),
            {"table": table},
        ).scalar()


def test_the_engine_refreshes_the_statistics_of_a_table_that_grew_and_only_then(
    database, tmp_path, now
):
    """app.refresh_statistics() runs ANALYZE with the owner's rights, for the engine's role:
    on a table that changed by a quarter and a thousand rows, at most once in ten seconds;
    on nothing else. No other role may call it."""
    import time

    tenant_id, _ = create_tenant(database.owner, "acme")
    path = write_csv(tmp_path / "leads.csv", people("lead", 1500))
    ingest_file(database.app, tenant_id, path, "leads", now)
    before = _last_analyzed(database, "contacts")
    deadline = time.monotonic() + 10
    analyzed = 0
    while not analyzed and time.monotonic() < deadline:  # counters reach the server in ~1 s
        with database.app.begin() as conn:
            analyzed = conn.execute(sa.text("select app.refresh_statistics()")).scalar()
        time.sleep(0.2)
    assert analyzed >= 1 and _last_analyzed(database, "contacts") != before
    with database.app.begin() as conn:  # nothing changed since: nothing to do
        assert conn.execute(sa.text("select app.refresh_statistics()")).scalar() == 0
    for role in (ANALYTICS_ROLE, DASHBOARDS_ROLE):
        with psycopg.connect(_libpq(database, role), autocommit=True) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("select app.refresh_statistics()")


def test_the_step_history_is_written_by_the_engines_triggers_only(database, two_tenants):  # noqa: F811
    alpha, bravo = two_tenants
    with tenant_transaction(database.app, alpha.tenant_id) as conn:
        seen = conn.execute(sa.text("select distinct tenant_id from app.step_transitions"))
        assert seen.scalars().all() == [alpha.tenant_id]  # its own history, none of bravo's
    for statement in (
        "insert into app.step_transitions (tenant_id, campaign_id, campaign_contact_id, "
        "contact_id, outcome, occurred_at) select tenant_id, campaign_id, id, contact_id, "
        "'moved', now() from app.campaign_contacts",
        "update app.step_transitions set exit_reason = 'rewritten'",
        "delete from app.step_transitions",
        "select app.record_step_transitions()",
    ):
        _refused(database, alpha.tenant_id, statement)


def _refused(database, tenant_id, statement: str) -> None:
    """`statement`, as the application role in the tenant's transaction, is denied."""
    with tenant_transaction(database.app, tenant_id) as conn:
        with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
            conn.execute(sa.text(statement))


def test_the_app_role_marks_its_own_forecasts_kept_and_changes_nothing_else_of_them(
    database,
    two_tenants,  # noqa: F811
):
    """`kept_at` is the one column of a forecast the application role may update (migration
    0018); another tenant's forecasts are out of its reach."""
    alpha, bravo = two_tenants
    with tenant_transaction(database.app, alpha.tenant_id) as conn:
        marked = conn.execute(
            sa.text("update app.send_forecasts set kept_at = now() where campaign_id = :id"),
            {"id": bravo.campaign_id},
        )
        assert marked.rowcount == 0  # bravo's forecast: not visible, not changed
        marked = conn.execute(
            sa.text("update app.send_forecasts set kept_at = now() where campaign_id = :id"),
            {"id": alpha.campaign_id},
        )
        assert marked.rowcount == 1
    for statement in (
        "update app.send_forecasts set summary = 'rewritten'",
        "update app.send_forecasts set forecast_at = now() + interval '1 day'",
        "update app.send_forecast_days set messages = 0",
    ):
        _refused(database, alpha.tenant_id, statement)
    with database.owner.connect() as conn:
        kept = dict(
            conn.execute(sa.text("select tenant_id, kept_at from app.send_forecasts")).all()
        )
    assert kept[alpha.tenant_id] is not None and kept[bravo.tenant_id] is None


def test_a_rows_change_xid_is_its_writers_transaction_whatever_the_writer_says(
    database,
    two_tenants,  # noqa: F811
):
    """`change_xid` (migration 0020), the commit order the marts and the freshness sensor
    follow, is set by the database: a writer that names another value, inserting or updating,
    gets its own transaction's id, and an update that leaves the column alone moves it too."""
    alpha, _ = two_tenants
    forge = sa.text(
        "update app.contacts set change_xid = '3', updated_at = :at "
        "where id = (select min(id::text)::uuid from app.contacts) returning change_xid::text"
    )
    stamp = sa.text("select pg_current_xact_id()::text")
    with tenant_transaction(database.app, alpha.tenant_id) as conn:
        inserted = conn.execute(
            sa.text(
                "insert into app.contacts (tenant_id, email, change_xid) values "
                "(app.current_tenant_id(), 'forger@example.com', '3') returning change_xid::text"
            )
        ).scalar_one()
        assert inserted == conn.execute(stamp).scalar_one()
    with tenant_transaction(database.app, alpha.tenant_id) as conn:
        forged = conn.execute(forge, {"at": "2000-01-01T00:00:00Z"}).scalar_one()
        assert forged == conn.execute(stamp).scalar_one() != inserted
    with tenant_transaction(database.app, alpha.tenant_id) as conn:
        touched = conn.execute(
            sa.text(
                "update app.contacts set tags = '{x}' where email = 'forger@example.com' "
                "returning change_xid::text"
            )
        ).scalar_one()
        assert touched == conn.execute(stamp).scalar_one() != inserted
