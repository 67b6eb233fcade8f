"""Apply the Alembic migrations programmatically (`penguin db upgrade`, `penguin up`)."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from psycopg import sql

from engine.config import ANALYTICS_ROLE, APP_ROLE
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


# Database-level privileges are not copied by CREATE DATABASE ... TEMPLATE or by a restore into
# a new database, so they are (re)applied on every upgrade instead of living in a migration.
_DATABASE_GRANTS = sa.text(
    """
    do $$
    begin
      -- dbt (as penguin_analytics) creates its analytics_* schemas in this database.
      execute format('grant create on database %I to penguin_analytics', current_database());
    end
    $$
    """
)


def _grant_database_privileges(db: Database) -> None:
    with db.owner.begin() as conn:
        conn.execute(_DATABASE_GRANTS)


def _set_role_passwords(db: Database) -> None:
    passwords = {APP_ROLE: db.settings.app_password, ANALYTICS_ROLE: db.settings.analytics_password}
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
