"""Apply the Alembic migrations programmatically (`penguin db upgrade`, `penguin up`)."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from psycopg import sql

from engine.config import ANALYTICS_ROLE, APP_ROLE, DASHBOARDS_ROLE, OPERATOR_ROLE, ROLES
from engine.db import Database

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config() -> Config:
    config = Config(str(MIGRATIONS / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(db: Database) -> str | None:
    with db.owner.connect() as conn:
        exists = conn.execute(sa.text("select to_regclass('app.alembic_version')")).scalar()
        if exists is None:
            return None
        return conn.execute(sa.text("select version_num from app.alembic_version")).scalar()


def upgrade(db: Database, revision: str = "head") -> str:
    """Migrate to `revision`, then give the roles their passwords if any are configured."""
    config = alembic_config()
    with db.owner.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, revision)
    _grant_database_privileges(db)
    _set_role_passwords(db)
    current = current_revision(db)
    assert current is not None
    return current


#: The schemas dbt writes (`generate_schema_name`: analytics_<custom schema>). The owner creates
#: them; the analytics role may create tables and views in them and nowhere else.
ANALYTICS_SCHEMAS = ("analytics", "analytics_staging", "analytics_intermediate", "analytics_marts")
#: The one schema the dashboards read.
MARTS_SCHEMA = "analytics_marts"

#: The roles that create temporary tables, and so keep the TEMPORARY privilege on the database
#: (revoked from PUBLIC): the engine stages an upload in them (`engine.ingest.store`) and dbt's
#: incremental `merge` and `delete+insert` build their new rows in one.
TEMP_ROLES = (APP_ROLE, ANALYTICS_ROLE)

# Database-level privileges are not copied by CREATE DATABASE ... TEMPLATE or by a restore into
# a new database, so they are (re)applied on every upgrade instead of living in a migration,
# with the analytics schemas (idempotent, so a schema added here reaches existing databases).
# Names are qualified: this runs as the owner, whatever its search path holds.
_DATABASE_GRANTS = sa.text(
    """
    do $$
    begin
        -- Only the owner creates schemas; no role may create in `public`. (A role made by a
        -- later revision than the database is at does not exist yet.)
        execute pg_catalog.format(
            'revoke create on database %I from %s', pg_catalog.current_database(),
            (select pg_catalog.string_agg(pg_catalog.quote_ident(r), ', ')
             from pg_catalog.unnest(array['public', {roles}]) r
             where r = 'public' or exists (select from pg_catalog.pg_roles where rolname = r)));
        if exists (select from pg_catalog.pg_namespace where nspname = 'public') then
            revoke create on schema public from public;
        end if;
        -- Temporary tables only for the roles that make them (TEMP_ROLES); the others,
        -- the dashboards' and the operator's, cannot create even those.
        execute pg_catalog.format(
            'revoke temporary on database %I from %s', pg_catalog.current_database(),
            (select pg_catalog.string_agg(pg_catalog.quote_ident(r), ', ')
             from pg_catalog.unnest(array['public', {roles}]) r
             where r = 'public' or exists (select from pg_catalog.pg_roles where rolname = r)));
        if exists (select from pg_catalog.pg_roles where rolname = any(array[{temp_roles}])) then
            execute pg_catalog.format(
                'grant temporary on database %I to %s', pg_catalog.current_database(),
                (select pg_catalog.string_agg(pg_catalog.quote_ident(rolname), ', ')
                 from pg_catalog.pg_roles where rolname = any(array[{temp_roles}])));
        end if;
    end
    $$
    """.replace("{roles}", ", ".join(f"'{role}'" for role in ROLES)).replace(
        "{temp_roles}", ", ".join(f"'{role}'" for role in TEMP_ROLES)
    )
)
_SCHEMA_OWNER = sa.text(
    "select pg_catalog.pg_get_userbyid(nspowner) from pg_catalog.pg_namespace where nspname = :s"
)


def _grant_database_privileges(db: Database) -> None:
    with db.owner.begin() as conn:
        conn.execute(_DATABASE_GRANTS)
        quote = conn.dialect.identifier_preparer.quote
        for schema in ANALYTICS_SCHEMAS:
            name = quote(schema)
            conn.execute(sa.text(f"create schema if not exists {name}"))
            owner = conn.execute(_SCHEMA_OWNER, {"s": schema}).scalar_one()
            if owner == ANALYTICS_ROLE:
                # dbt created it itself before revision 0004: it becomes the owner's.
                conn.execute(sa.text(f"alter schema {name} owner to current_user"))
            conn.execute(sa.text(f"revoke all on schema {name} from public"))
            conn.execute(sa.text(f"grant usage, create on schema {name} to {ANALYTICS_ROLE}"))
        conn.execute(sa.text(f"grant usage on schema {quote(MARTS_SCHEMA)} to {DASHBOARDS_ROLE}"))


_STRAY_SCHEMAS = sa.text(
    """
    select n.nspname as schema, pg_catalog.pg_get_userbyid(n.nspowner) as owner
    from pg_catalog.pg_namespace n
    where (pg_catalog.pg_get_userbyid(n.nspowner) = any(:roles)
           or n.nspname = any(:roles) or n.nspname = current_user)
      and n.nspname <> all(:expected)
    order by 1
    """
)


#: The project's roles that can still create temporary tables though they should not: the
#: revocation (`_DATABASE_GRANTS`) is only a warning of PostgreSQL's when the migrating role
#: does not own the database (an external server's database made by someone else).
_STRAY_TEMP = sa.text(
    """
    select r from pg_catalog.unnest(cast(:roles as text[])) r
    where exists (select from pg_catalog.pg_roles where rolname = r)
      and pg_catalog.has_database_privilege(r, pg_catalog.current_database(), 'TEMPORARY')
    order by 1
    """
)


def stray_schema_warnings(db: Database) -> list[str]:
    """One warning per schema that no migration made but a role could have: owned by one of
    the project's roles, or named after a role (a default search path's "$user"). Since
    revision 0004 no role but the owner can create one; a database upgraded from before may
    still hold one a role planted then, for the operator to inspect and drop. And one per
    role that may create temporary tables without needing them (see `_STRAY_TEMP`)."""
    with db.owner.connect() as conn:
        rows = conn.execute(
            _STRAY_SCHEMAS,
            {
                "roles": list(ROLES),
                "expected": list(ANALYTICS_SCHEMAS),
            },
        )
        warnings = [
            f"schema {row.schema!r} (owner {row.owner}) was not made by a migration and a "
            "role's SQL could resolve names in it; inspect it and drop it if nobody needs it: "
            f'drop schema "{row.schema}" cascade'
            for row in rows
        ]
        database = conn.execute(sa.text("select pg_catalog.current_database()")).scalar_one()
        loose = [role for role in ROLES if role not in TEMP_ROLES]
        for role in conn.execute(_STRAY_TEMP, {"roles": loose}).scalars():
            warnings.append(
                f"role {role} may create temporary tables in database {database!r}, which it "
                "never needs: as the database's owner, run "
                f'revoke temporary on database "{database}" from public, {role}'
            )
        return warnings


def _set_role_passwords(db: Database) -> None:
    passwords = {
        APP_ROLE: db.settings.app_password,
        ANALYTICS_ROLE: db.settings.analytics_password,
        DASHBOARDS_ROLE: db.settings.dashboards_password,
        OPERATOR_ROLE: db.settings.operator_password,
    }
    statements = [
        sql.SQL("alter role {} password {}").format(sql.Identifier(role), sql.Literal(password))
        for role, password in passwords.items()
        if password
    ]
    if not statements:
        return
    raw = db.owner.raw_connection()
    try:
        with raw.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
        raw.commit()
    finally:
        raw.close()
