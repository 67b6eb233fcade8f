"""Fixtures: a real PostgreSQL (pgserver), real SMTP servers (aiosmtpd), a fixed clock."""

from __future__ import annotations

import dataclasses
import os
import socket
import uuid
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import Message
from pathlib import Path

import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller

from engine import migrate
from engine.config import Settings
from engine.db import Database, sqlalchemy_url
from tests.imap_server import imap_server  # noqa: F401 (a fixture for every test)
from tests.smtp_faults import smtp_faults  # noqa: F401 (a fixture for every test)

# Telemetry off for everything the tests start, before anything imports dagster or dbt.
os.environ.update(
    {
        "DO_NOT_TRACK": "1",
        "DAGSTER_DISABLE_TELEMETRY": "1",
        "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false",
    }
)

#: The fake clock: engine functions take `now`, so tests pass this instead of sleeping.
NOW = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def now() -> datetime:
    return NOW


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One throwaway PostgreSQL 16 server for the session; its owner (superuser) URL."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

        server = pgserver.get_server(tmp_path_factory.mktemp("pg") / "data", cleanup_mode="delete")
    yield server.get_uri()
    server.cleanup()


@pytest.fixture(scope="session")
def template_database(pg_server: str) -> str:
    """A database migrated to head once; each test gets a copy of it."""
    name = "penguin_template"
    owner = sa.create_engine(sqlalchemy_url(pg_server), isolation_level="AUTOCOMMIT")
    with owner.connect() as conn:
        conn.execute(sa.text(f"create database {name}"))
    owner.dispose()
    url = sqlalchemy_url(pg_server).set(database=name)
    db = Database(Settings(home=Path("/nonexistent"), database_url=str(url)), owner_url=url)
    migrate.upgrade(db)
    db.dispose()
    return name


def copy_of_template(pg_server: str, template: str, name: str, home: Path) -> Database:
    """Database `name`, a copy of the migrated template, with `home` as its PENGUIN_HOME."""
    admin = sa.create_engine(sqlalchemy_url(pg_server), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"create database {name} template {template}"))
    admin.dispose()
    url = sqlalchemy_url(pg_server).set(database=name)
    db = Database(Settings(home=home, database_url=url.render_as_string(False)), owner_url=url)
    migrate.upgrade(db)  # at head already; re-applies the database-level grants of a copy
    return db


@pytest.fixture
def database(pg_server: str, template_database: str, tmp_path: Path) -> Iterator[Database]:
    """A fresh, migrated database (a copy of the template) with its own PENGUIN_HOME."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    db = copy_of_template(pg_server, template_database, name, tmp_path / "home")
    yield db
    db.dispose()
    admin = sa.create_engine(sqlalchemy_url(pg_server), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"drop database {name} with (force)"))
    admin.dispose()


class RecordingHandler:
    """An SMTP server's handler that keeps what it receives and refuses chosen recipients."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.refuse: dict[str, str] = {}  # address -> SMTP reply, e.g. "550 5.1.1 No such user"
        self.refuse_sender: str | None = None  # reply to MAIL FROM, e.g. "553 Not allowed"
        self.refuse_data: str | None = None  # reply to DATA, e.g. "554 5.7.1 Spam"

    async def handle_MAIL(self, server, session, envelope, address, mail_options):  # noqa: N802
        if self.refuse_sender:
            return self.refuse_sender
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
        if address.lower() in self.refuse:
            return self.refuse[address.lower()]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        if self.refuse_data:
            return self.refuse_data
        self.messages.append(message_from_bytes(envelope.content, policy=policy.default))
        return "250 Message accepted for delivery"


@dataclasses.dataclass
class SmtpTestServer:
    host: str
    port: int
    handler: RecordingHandler

    @property
    def messages(self) -> list[Message]:
        return self.handler.messages

    def server(self):
        from engine.senders import SmtpServer

        return SmtpServer(self.host, self.port)


@pytest.fixture
def smtp_server() -> Iterator[SmtpTestServer]:
    """A real SMTP server (aiosmtpd) on a free port."""
    handler = RecordingHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    yield SmtpTestServer("127.0.0.1", port, handler)
    controller.stop()


@dataclasses.dataclass
class Pipeline:
    database: Database
    smtp: SmtpTestServer
    result: object  # dagster ExecuteInProcessResult


@pytest.fixture(scope="session")
def built_pipeline(pg_server: str, template_database: str, tmp_path_factory) -> Iterator[Pipeline]:
    """The demo data run once through every stage, in-process through Dagster and dbt:
    inbox CSV → contacts → enrollments → SMTP → sent_emails → dbt marts."""
    import dagster as dg
    from dagster_dbt import DbtCliResource

    from engine import demo
    from orchestration import analytics, ingestion, sending
    from orchestration.resources import PostgresResource, SmtpResource

    home = tmp_path_factory.mktemp("pipeline-home")
    db = copy_of_template(pg_server, template_database, "pipeline", home)

    handler = RecordingHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    demo.load_demo(db, datetime.now(UTC))
    resources = {
        "postgres": PostgresResource(database_url=db.settings.database_url, penguin_home=str(home)),
        "smtp": SmtpResource(sink_host="127.0.0.1", sink_port=port),
        "dbt": DbtCliResource(
            project_dir=analytics.dbt_project, dbt_executable=analytics.DBT_EXECUTABLE
        ),
    }
    # The marts as the freshness sensor's refresh builds them: a partition (today) tagged as a
    # refresh, so dbt builds everything new.
    today = analytics.ANALYTICS_DAYS.get_last_partition_key()
    result = dg.materialize(
        [
            ingestion.uploads,
            sending.enrollments,
            sending.sent_emails,
            analytics.analytics_models,
            analytics.analytics_daily,
        ],
        resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
        partition_key=today,
        tags={analytics.REFRESH_TAG: "refresh"},
        raise_on_error=False,
    )
    yield Pipeline(db, SmtpTestServer("127.0.0.1", port, handler), result)
    controller.stop()
    db.dispose()


@pytest.fixture
def env(database: Database) -> dict[str, str]:
    """The environment of a user's shell pointed at `database` (for running `penguin`)."""
    return {
        **os.environ,
        "DATABASE_URL": database.settings.database_url,
        "PENGUIN_HOME": str(database.settings.home),
        "COLUMNS": "200",
    }
