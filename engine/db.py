"""Connections: the server, one engine per role, and tenant-scoped transactions.

Five roles touch the database, each with the least it needs:

* the **owner** (`DATABASE_URL`, or the embedded server's superuser) runs migrations and
  creates tenants; it is the only role that can create anything outside `analytics_*`;
* the **application role** runs the engine; it is neither owner, superuser nor `BYPASSRLS`,
  so row-level security confines it to the tenant bound to each transaction
  (`tenant_transaction`), which nothing in that transaction can switch;
* the **analytics role** reads every tenant (a `SELECT`-only policy) for dbt and creates
  tables and views only in the `analytics_*` schemas the owner made for it;
* the **dashboards role** reads the marts (`analytics_marts`) and nothing else, in read-only
  transactions that its connections ask for themselves (the role's own defaults are not
  trusted: a role may change them);
* the **operator role** is the dashboards' operators' corner: it reads what a campaign's
  forecast reads and changes a campaign's status, in its own tenant's transactions only.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine, make_url

from engine.config import ANALYTICS_ROLE, APP_ROLE, DASHBOARDS_ROLE, OPERATOR_ROLE, Settings
from engine.embedded import start_embedded_postgres


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
    sslmode: str | None = None

    def environment(self) -> dict[str, str]:
        """The server's coordinates as the `PENGUIN_PG_*` variables every process of the
        system (and dbt's profiles.yml) reads; never a user or a password."""
        env = {
            "PENGUIN_PG_HOST": self.host,
            "PENGUIN_PG_PORT": str(self.port),
            "PENGUIN_PG_DATABASE": self.dbname,
        }
        if self.sslmode:
            env["PENGUIN_PG_SSLMODE"] = self.sslmode
        return env


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
        sslmode=_one(url.query.get("sslmode")),
    )


def _one(value: str | tuple[str, ...] | None) -> str | None:
    return value[0] if isinstance(value, tuple) else value


#: Every connection resolves names in the catalog and `app` only, which no role but the owner can
#: create objects in (the roles carry the same setting; this holds before the migration sets it).
SEARCH_PATH = "pg_catalog,app"
_CONNECT_ARGS = {"options": f"-c search_path={SEARCH_PATH}"}


def _engine(url: URL, options: str = "", *, read_only: bool = False) -> Engine:
    # Set per connection, not only on the role: a role may change its own defaults
    # (ALTER ROLE ... SET), but not what the engine asks for when it connects.
    connect_args = {"options": f"{_CONNECT_ARGS['options']} {options}".strip()}
    # `read_only`: every transaction also begins READ ONLY (psycopg's `read_only`), so a
    # session default switched off and committed on a pooled connection (`SET SESSION
    # CHARACTERISTICS ... READ WRITE`) does not carry into the next checkout's transaction.
    execution_options = {"postgresql_readonly": True} if read_only else {}
    return sa.create_engine(
        url, pool_pre_ping=True, connect_args=connect_args, execution_options=execution_options
    )


class OwnerUnavailableError(RuntimeError):
    """This process was given no owner credentials (by design: see `Settings`)."""


class Database:
    """The server's coordinates and an engine per role, created lazily and shared.

    With `DATABASE_URL` (or the embedded server, started here when neither `DATABASE_URL` nor
    `PENGUIN_PG_HOST` is set) the process knows the owner and derives the roles' URLs from it;
    with only `PENGUIN_PG_*` it can reach the roles it has passwords for, never the owner.
    """

    def __init__(self, settings: Settings, owner_url: str | URL | None = None):
        self.settings = settings
        if owner_url is None and settings.database_url:
            owner_url = settings.database_url
        if owner_url is None and settings.pg_host is None:
            owner_url = start_embedded_postgres(settings)
        self.owner_url: URL | None = None if owner_url is None else sqlalchemy_url(owner_url)
        if self.owner_url is not None:
            self.server = connection_parts(self.owner_url)
        else:
            assert settings.pg_host is not None
            self.server = ConnectionParts(
                host=settings.pg_host,
                port=settings.pg_port,
                user="",
                password="",
                dbname=settings.pg_database,
                sslmode=settings.pg_sslmode,
            )

    @classmethod
    def from_env(cls) -> Database:
        return cls(Settings.from_env())

    def role_url(self, role: str, password: str | None) -> URL:
        if self.owner_url is not None:  # keeps the owner URL's options (sslmode, ...)
            return self.owner_url.set(username=role, password=password)
        server = self.server
        query = {"sslmode": server.sslmode} if server.sslmode else {}
        if server.host.startswith("/"):  # a Unix socket folder (the embedded server)
            return URL.create(
                "postgresql+psycopg",
                username=role,
                password=password,
                database=server.dbname,
                query={"host": server.host, "port": str(server.port), **query},
            )
        return URL.create(
            "postgresql+psycopg",
            username=role,
            password=password,
            host=server.host,
            port=server.port,
            database=server.dbname,
            query=query,
        )

    @property
    def app_url(self) -> URL:
        return self.role_url(APP_ROLE, self.settings.app_password)

    @property
    def analytics_url(self) -> URL:
        return self.role_url(ANALYTICS_ROLE, self.settings.analytics_password)

    @property
    def dashboards_url(self) -> URL:
        return self.role_url(DASHBOARDS_ROLE, self.settings.dashboards_password)

    @property
    def operator_url(self) -> URL:
        return self.role_url(OPERATOR_ROLE, self.settings.operator_password)

    @cached_property
    def owner(self) -> Engine:
        if self.owner_url is None:
            raise OwnerUnavailableError(
                "this process has no owner credentials (DATABASE_URL); migrations and tenant "
                "creation run from the `penguin` command"
            )
        return _engine(self.owner_url)

    @cached_property
    def app(self) -> Engine:
        return _engine(self.app_url)

    @cached_property
    def analytics(self) -> Engine:
        return _engine(self.analytics_url)

    @cached_property
    def dashboards(self) -> Engine:
        return _engine(self.dashboards_url, "-c default_transaction_read_only=on", read_only=True)

    @cached_property
    def operator(self) -> Engine:
        return _engine(self.operator_url)

    def dispose(self) -> None:
        for name in ("owner", "app", "analytics", "dashboards", "operator"):
            engine = self.__dict__.pop(name, None)
            if engine is not None:
                engine.dispose()


_BIND_TENANT = sa.text("select app.bind_tenant(:tenant_id)")


def is_transient(exc: BaseException) -> bool:
    """A failure that may pass on its own: the server or the connection, not the data."""
    return isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError) or (
        isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated
    )


@contextmanager
def tenant_transaction(engine: Engine, tenant_id: uuid.UUID) -> Iterator[Connection]:
    """One transaction in which row-level security sees only `tenant_id`'s rows.

    `app.bind_tenant` records the tenant under the transaction's id, where only the owner can
    write, and refuses any other tenant for the rest of the transaction: nothing that runs in
    it can act for another tenant. The binding ends with the transaction, so a pooled
    connection never carries a tenant into its next use.
    """
    with engine.connect() as conn, bound_transaction(conn, tenant_id):
        yield conn


@contextmanager
def bound_transaction(conn: Connection, tenant_id: uuid.UUID) -> Iterator[Connection]:
    """`tenant_transaction` on a connection the caller holds for several transactions, one
    after the other (it must not be in one already)."""
    with conn.begin():
        conn.execute(_BIND_TENANT, {"tenant_id": tenant_id})
        yield conn
