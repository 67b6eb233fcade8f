"""Sender accounts: who mail goes out as, and over which SMTP server."""

from __future__ import annotations

import os
import re
import uuid
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
_PASSWORD_ENV = re.compile(rf"^{PASSWORD_ENV_PREFIX}[A-Z0-9_]+$")


def check_password_env(name: str) -> str:
    if not _PASSWORD_ENV.match(name):
        raise SenderConfigError(
            f"smtp_password_env {name!r} must be an environment variable named "
            f"{PASSWORD_ENV_PREFIX}<NAME> (capital letters, digits, '_')"
        )
    return name


def smtp_server_for(
    row: sa.Row | dict, sink: SmtpServer, env: dict[str, str] | os._Environ = os.environ
) -> SmtpServer:
    """The SMTP server of a sender account row; the local sink when it has no host."""
    get = row.get if isinstance(row, dict) else row._mapping.get
    host = get("smtp_host")
    if not host:
        return sink
    password = None
    password_env = get("smtp_password_env")
    if password_env:
        check_password_env(password_env)
        password = env.get(password_env)
        if password is None:
            raise SenderConfigError(
                f"sender {get('sender_email') or get('email')}: environment variable "
                f"{password_env} (its SMTP password) is not set"
            )
    security = get("smtp_security") or "starttls"
    default_port = {"none": 25, "starttls": 587, "tls": 465}[security]
    return SmtpServer(
        host=host,
        port=get("smtp_port") or default_port,
        security=security,
        username=get("smtp_username"),
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
    """Create or update the sender `email` of the transaction's tenant."""
    if smtp_password_env is not None:
        check_password_env(smtp_password_env)
    try:
        email = validate_email(email, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise SenderConfigError(f"sender address {email!r} is not valid: {exc}") from None
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
