"""Resources: the database (`postgres`) and the local SMTP sink (`smtp`).

Both fall back to the same settings every other process reads (engine.config.Settings),
resolved when a run starts, never at import time: `penguin up` exports them to Dagster.
"""

import dataclasses
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
from pydantic import PrivateAttr

from engine.config import Settings
from engine.db import Database, connection_parts
from engine.senders import SmtpServer


class PostgresResource(dg.ConfigurableResource):
    """PostgreSQL for the engine (application role) and dbt (analytics role)."""

    database_url: str | None = None
    penguin_home: str | None = None

    _db: Database | None = PrivateAttr(default=None)

    def settings(self) -> Settings:
        settings = Settings.from_env()
        if self.penguin_home:
            settings = dataclasses.replace(settings, home=Path(self.penguin_home))
        if self.database_url:
            settings = dataclasses.replace(settings, database_url=self.database_url)
        return settings

    @property
    def db(self) -> Database:
        if self._db is None:
            self._db = Database(self.settings())
        return self._db

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._db is not None:
            self._db.dispose()

    def dbt_env(self) -> dict[str, str]:
        """What dbt's profiles.yml reads: the server, and the analytics role's password."""
        parts = connection_parts(self.db.owner_url)
        env = {
            "PENGUIN_PG_HOST": parts.host,
            "PENGUIN_PG_PORT": str(parts.port),
            "PENGUIN_PG_DATABASE": parts.dbname,
        }
        if self.db.settings.analytics_password:
            env["PENGUIN_ANALYTICS_PASSWORD"] = self.db.settings.analytics_password
        return env

    @contextmanager
    def dbt_environment(self) -> Iterator[None]:
        """Run dbt (which reads os.environ) against this database, then restore the env."""
        saved = dict(os.environ)
        os.environ.update(self.dbt_env())
        try:
            yield
        finally:
            os.environ.clear()
            os.environ.update(saved)


class SmtpResource(dg.ConfigurableResource):
    """The local SMTP sink, used by sender accounts that have no SMTP host of their own."""

    sink_host: str | None = None
    sink_port: int | None = None

    def sink(self) -> SmtpServer:
        settings = Settings.from_env()
        return SmtpServer(
            host=self.sink_host or settings.smtp_sink_host,
            port=self.sink_port or settings.smtp_sink_port,
            security="none",
        )
