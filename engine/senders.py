"""Sender accounts: who mail goes out as, and over which SMTP server."""

from __future__ import annotations

import ipaddress
import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

import sqlalchemy as sa
from email_validator import EmailNotValidError, validate_email
from sqlalchemy.engine import Connection

_INSERT = sa.text(
    """
    insert into app.sender_accounts
        (tenant_id, email, display_name, smtp_host, smtp_port, smtp_security, smtp_username,
         smtp_password_env, daily_limit, min_gap_seconds)
    values
        (app.current_tenant_id(), :email, :display_name, :smtp_host, :smtp_port, :smtp_security,
         :smtp_username, :smtp_password_env, :daily_limit, :min_gap_seconds)
    on conflict (tenant_id, lower(email)) do update set
        display_name = excluded.display_name, smtp_host = excluded.smtp_host,
        smtp_port = excluded.smtp_port, smtp_security = excluded.smtp_security,
        smtp_username = excluded.smtp_username, smtp_password_env = excluded.smtp_password_env,
        daily_limit = excluded.daily_limit, min_gap_seconds = excluded.min_gap_seconds,
        updated_at = now()
    returning id
    """
)


@dataclass(frozen=True)
class SmtpServer:
    """Where and how to deliver; `password` is resolved from the environment at send time."""

    host: str
    port: int
    security: str = "none"  # none | starttls | tls
    username: str | None = None
    password: str | None = None


class SenderConfigError(ValueError):
    pass


#: SMTP passwords are read from variables with this prefix only, so a sender account can never
#: name (and send to its own server) another secret of the process, such as DATABASE_URL.
PASSWORD_ENV_PREFIX = "PENGUIN_SMTP_"
#: The part after the tenant: no leading, trailing or double '_', so "__" can only be the
#: separator and (tenant, name) → variable is one-to-one (the database refuses two tenants
#: whose names upper-case to the same form).
_PASSWORD_NAME = r"[A-Z0-9]+(?:_[A-Z0-9]+)*"

_TENANT_NAME = sa.text("select name from app.tenants where id = app.current_tenant_id()")


def password_env_prefix(tenant: str) -> str:
    """`PENGUIN_SMTP_<TENANT>__`: the only variables a sender account of `tenant` may name."""
    return f"{PASSWORD_ENV_PREFIX}{tenant.upper().replace('-', '_')}__"


def check_password_env(name: str, tenant: str) -> str:
    """Refuse a password variable that is not `tenant`'s own (`PENGUIN_SMTP_<TENANT>__<NAME>`).

    Checked when an account is saved and again at send time, so a row written by other means
    still cannot read another tenant's password.
    """
    prefix = password_env_prefix(tenant)
    if not re.fullmatch(re.escape(prefix) + _PASSWORD_NAME, name):
        raise SenderConfigError(
            f"smtp_password_env {name!r} must be named {prefix}<NAME> for tenant {tenant} "
            "(<NAME>: capital letters and digits, words joined by single '_')"
        )
    return name


def is_loopback_host(host: str) -> bool:
    """`localhost` or a loopback address literal (127.0.0.0/8, ::1); no DNS lookup."""
    host = host.strip().rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.removeprefix("[").removesuffix("]")).is_loopback
    except ValueError:
        return False


def cleartext_login_refusal(host: str, security: str, has_login: bool) -> str | None:
    """Why a login to `host` must not be attempted, or None: AUTH never goes in clear text
    (`smtp_security` 'none') to a host that is not this machine."""
    if has_login and security == "none" and not is_loopback_host(host):
        return (
            f"SMTP host {host!r} has smtp_security 'none', so a login would send the password "
            "in clear text; use 'starttls' or 'tls' (only localhost or a loopback address may "
            "use 'none' with a login)"
        )
    return None


def smtp_server_for(
    row: sa.Row | dict,
    sink: SmtpServer,
    *,
    tenant: str,
    env: Mapping[str, str] = os.environ,
) -> SmtpServer:
    """The SMTP server of a sender account row of `tenant`; the local sink when it has no host.

    Raises `SenderConfigError` for an account that names another tenant's password variable,
    one whose variable is unset, or one that would log in over an unencrypted connection to
    another machine: nothing is sent for it and no AUTH is ever attempted.
    """
    get = row.get if isinstance(row, dict) else row._mapping.get
    host = get("smtp_host")
    if not host:
        return sink
    sender = get("sender_email") or get("email")
    security = get("smtp_security") or "starttls"
    username = get("smtp_username")
    password_env = get("smtp_password_env")
    refusal = cleartext_login_refusal(host, security, bool(username or password_env))
    if refusal:
        raise SenderConfigError(f"sender {sender}: {refusal}")
    password = None
    if password_env:
        try:
            check_password_env(password_env, tenant)
        except SenderConfigError as exc:
            raise SenderConfigError(f"sender {sender}: {exc}") from None
        password = env.get(password_env)
        if password is None:
            raise SenderConfigError(
                f"sender {sender}: environment variable "
                f"{password_env} (its SMTP password) is not set"
            )
    default_port = {"none": 25, "starttls": 587, "tls": 465}[security]
    return SmtpServer(
        host=host,
        port=get("smtp_port") or default_port,
        security=security,
        username=username,
        password=password,
    )


def create_sender(
    conn: Connection,
    email: str,
    display_name: str | None = None,
    *,
    smtp_host: str | None = None,
    smtp_port: int | None = None,
    smtp_security: str = "starttls",
    smtp_username: str | None = None,
    smtp_password_env: str | None = None,
    daily_limit: int = 200,
    min_gap_seconds: int = 60,
) -> uuid.UUID:
    """Create or update the sender `email` of the transaction's tenant.

    Refuses a password variable that is not the tenant's own and a login that would go in
    clear text to another machine (see `smtp_server_for`, which checks both again at send time).
    """
    try:
        email = validate_email(email, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise SenderConfigError(f"sender address {email!r} is not valid: {exc}") from None
    if smtp_password_env is not None:
        tenant = conn.execute(_TENANT_NAME).scalar()
        if tenant is None:
            raise RuntimeError("create_sender needs a tenant transaction (db.tenant_transaction)")
        try:
            check_password_env(smtp_password_env, tenant)
        except SenderConfigError as exc:
            raise SenderConfigError(f"sender {email}: {exc}") from None
    if smtp_host:
        refusal = cleartext_login_refusal(
            smtp_host, smtp_security, bool(smtp_username or smtp_password_env)
        )
        if refusal:
            raise SenderConfigError(f"sender {email}: {refusal}")
    return conn.execute(
        _INSERT,
        {
            "email": email,
            "display_name": display_name,
            "smtp_host": smtp_host,
            "smtp_port": smtp_port,
            "smtp_security": smtp_security,
            "smtp_username": smtp_username,
            "smtp_password_env": smtp_password_env,
            "daily_limit": daily_limit,
            "min_gap_seconds": min_gap_seconds,
        },
    ).scalar_one()
