"""Connections: the embedded server, the three roles, and tenant-scoped transactions.

Three roles touch the database, each with the least it needs:

* the **owner** (`DATABASE_URL`, or the embedded server's superuser) runs migrations and
  creates tenants;
* the **application role** runs the engine; it is neither owner, superuser nor `BYPASSRLS`,
  so row-level security confines it to the tenant set with `SET LOCAL` in each transaction;
* the **analytics role** reads every tenant (a `SELECT`-only policy) for dbt and writes the
  `analytics_*` schemas the dashboards read.
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine, make_url

from engine.config import ANALYTICS_ROLE, APP_ROLE, Settings

_embedded: dict[str, object] = {}


def start_embedded_postgres(settings: Settings, *, keep_running: bool = False) -> str:
    """Start (or attach to) the pgserver instance under `PENGUIN_HOME`; return its URL.

    pgserver shares one server among every process that asks for the same folder and stops
    it when the last of them exits, unless `keep_running` (used by `penguin env`, whose
    exports must outlive the command).
    """
    key = str(settings.pgdata)
    if key not in _embedded:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pgserver warns when XDG_RUNTIME_DIR is unset
            import pgserver

            settings.home.mkdir(parents=True, exist_ok=True)
            _embedded[key] = pgserver.get_server(
                settings.pgdata, cleanup_mode=None if keep_running else "stop"
            )
    server = _embedded[key]
    return server.get_uri()  # type: ignore[attr-defined]


def stop_embedded_postgres(settings: Settings) -> None:
    server = _embedded.pop(str(settings.pgdata), None)
    if server is not None:
        server.cleanup()  # type: ignore[attr-defined]


def sqlalchemy_url(url: str | URL) -> URL:
    """Any PostgreSQL URL (libpq style, pgserver's, or SQLAlchemy's) as a psycopg 3 URL."""
    parsed = make_url(url)
    if parsed.get_backend_name() not in ("postgresql", "postgres"):
        raise ValueError(f"not a PostgreSQL URL: {parsed.render_as_string(hide_password=True)}")
    return parsed.set(drivername="postgresql+psycopg")


@dataclass(frozen=True)
class ConnectionParts:
    """A URL taken apart the way dbt's profile and libpq's PG* variables want it."""

    host: str
    port: int
    user: str
    password: str
    dbname: str


def connection_parts(url: URL) -> ConnectionParts:
    host = url.host or url.query.get("host") or "localhost"
    if isinstance(host, tuple):
        host = host[0]
    return ConnectionParts(
        host=host,
        port=url.port or 5432,
        user=url.username or "",
        password=url.password or "",
        dbname=url.database or "postgres",
    )


class Database:
    """The owner URL and the engines for each role, created lazily and shared."""

    def __init__(self, settings: Settings, owner_url: str | URL | None = None):
        self.settings = settings
        if owner_url is None:
            owner_url = settings.database_url or start_embedded_postgres(settings)
        self.owner_url = sqlalchemy_url(owner_url)

    @classmethod
    def from_env(cls) -> Database:
        return cls(Settings.from_env())

    def role_url(self, role: str, password: str | None) -> URL:
        return self.owner_url.set(username=role, password=password)

    @property
    def app_url(self) -> URL:
        return self.role_url(APP_ROLE, self.settings.app_password)

    @property
    def analytics_url(self) -> URL:
        return self.role_url(ANALYTICS_ROLE, self.settings.analytics_password)

    @cached_property
    def owner(self) -> Engine:
        return sa.create_engine(self.owner_url, pool_pre_ping=True)

    @cached_property
    def app(self) -> Engine:
        return sa.create_engine(self.app_url, pool_pre_ping=True)

    @cached_property
    def analytics(self) -> Engine:
        return sa.create_engine(self.analytics_url, pool_pre_ping=True)

    def dispose(self) -> None:
        for name in ("owner", "app", "analytics"):
            engine = self.__dict__.pop(name, None)
            if engine is not None:
                engine.dispose()


_SET_TENANT = sa.text("select set_config('app.tenant_id', :tenant_id, true)")


@contextmanager
def tenant_transaction(engine: Engine, tenant_id: uuid.UUID) -> Iterator[Connection]:
    """One transaction in which row-level security sees only `tenant_id`'s rows.

    `set_config(..., true)` is `SET LOCAL` with a bind parameter: the setting ends with the
    transaction, so a pooled connection never carries a tenant into the next use.
    """
    with engine.begin() as conn:
        conn.execute(_SET_TENANT, {"tenant_id": str(tenant_id)})
        yield conn
