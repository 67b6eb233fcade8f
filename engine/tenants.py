"""Tenants: created by the owner role, looked up by name by everyone else."""

from __future__ import annotations

import re
import shlex
import uuid

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from engine.text import shown

DEFAULT_TENANT = "default"
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")

_INSERT = sa.text(
    "insert into app.tenants (name) values (:name) on conflict (name) do nothing returning id"
)
# The application role sees only its transaction's tenant in app.tenants; outside any tenant's
# transaction it looks tenants up here (the owner may too).
_BY_NAME = sa.text("select id from app.tenant_directory() where name = :name")
_ALL = sa.text("select id, name from app.tenant_directory() order by name")
_CREATED = sa.text("select id from app.tenants where name = :name")
_TWIN = sa.text(
    """
    select name from app.tenants
    where upper(translate(name, '-', '_')) = upper(translate(:name, '-', '_')) and name <> :name
    """
)


class UnknownTenantError(LookupError):
    pass


def validate_name(name: str) -> str:
    if not _NAME.fullmatch(name):  # not `match` with `$`, which allows a final newline
        raise ValueError(
            f"tenant name {name!r} is not valid: use 1-63 lowercase letters, digits, '-' or '_',"
            " starting with a letter or digit"
        )
    return name


def create_tenant(owner: Engine, name: str) -> tuple[uuid.UUID, bool]:
    """Create tenant `name` (owner role); return its id and whether it is new."""
    validate_name(name)
    with owner.begin() as conn:
        if (twin := conn.execute(_TWIN, {"name": name}).scalar()) is not None:
            raise ValueError(
                f"tenant name {name!r} is too close to the existing tenant {twin!r}: names that "
                "differ only in '-' and '_' would share SMTP password variables "
                "(PENGUIN_SMTP_<TENANT>__<NAME>)"
            )
        new_id = conn.execute(_INSERT, {"name": name}).scalar()
        if new_id is not None:
            return new_id, True
        return conn.execute(_CREATED, {"name": name}).scalar_one(), False


def tenant_id(engine: Engine, name: str) -> uuid.UUID:
    with engine.connect() as conn:
        found = conn.execute(_BY_NAME, {"name": name}).scalar()
    if found is None:
        raise UnknownTenantError(
            f"no tenant named {name!r}; create it with `penguin tenant create {name}`"
        )
    return found


def penguin_command(args: str, tenant: str) -> str:
    """`penguin ARGS` as a hint of what to run next, for `tenant`: with its `--tenant` unless it
    is the default one, so that a hint copied from a command run for one tenant acts on that
    tenant, not on the default. Every hint naming a follow-up command is built here."""
    if tenant == DEFAULT_TENANT:
        return f"penguin {args}"
    return f"penguin {args} --tenant {tenant}"


def shell_word(value: object) -> str:
    """`value` (a campaign's name, an address) as one word of a `penguin_command` hint, quoted
    for the shell where it needs it: a hint copied into a shell must pass the whole name as
    one argument (`'Spring launch'`) and run nothing a name holds (`;`, `$(...)`)."""
    return shlex.quote(shown(value))


_CURRENT_NAME = sa.text("select name from app.tenants where id = app.current_tenant_id()")


def current_tenant_name(conn: sa.Connection) -> str:
    """The name of the tenant `conn`'s transaction is fixed to (`db.tenant_transaction`)."""
    return conn.execute(_CURRENT_NAME).scalar_one()


def all_tenants(engine: Engine) -> list[tuple[uuid.UUID, str]]:
    with engine.connect() as conn:
        return [(row.id, row.name) for row in conn.execute(_ALL)]
