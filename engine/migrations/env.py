"""Alembic environment: runs migrations over the owner connection, in schema `app`."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from engine.config import Settings
from engine.db import Database

config = context.config


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:  # alembic CLI by hand: same settings as every other process
        engine = Database(Settings.from_env()).owner
        with engine.begin() as connection:
            _run(connection)
    else:
        _run(connection)


def _run(connection: sa.Connection) -> None:
    # The version table lives in `app`, so the schema must exist before alembic looks for it.
    connection.execute(sa.text("create schema if not exists app"))
    context.configure(
        connection=connection,
        version_table_schema="app",
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations_online()
