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
from engine.db import Database
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
        env = self.db.server.environment()
        if self.db.settings.analytics_password:
            env["PENGUIN_ANALYTICS_PASSWORD"] = self.db.settings.analytics_password
        return env

    @contextmanager
    def dbt_environment(self) -> Iterator[None]:
        """Point dbt at this resource's database for the duration of a build.

        dagster-dbt (0.29) gives dbt no environment of its own: `DbtCliResource.cli` copies
        `os.environ` into the dbt process and renders profiles.yml in this process from
        `os.environ` too, so the variables must be in this process's environment. Under
        `penguin up` they already are (and nothing changes here); a resource configured with
        another `database_url` (tests) sets them for the build and puts back exactly the
        variables it changed, leaving the rest of the environment alone.
        """
        wanted = self.dbt_env()
        saved = {name: os.environ.get(name) for name in wanted}
        os.environ.update(wanted)
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


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
