"""Sender accounts: who mail goes out as, and over which SMTP server."""

from __future__ import annotations

import ipaddress
import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta

import sqlalchemy as sa
from email_validator import EmailNotValidError, validate_email
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from engine.sending.store import COUNTS_AGAINST_LIMITS

_INSERT = sa.text(
    """
    insert into app.sender_accounts
        (tenant_id, email, display_name, smtp_host, smtp_port, smtp_security, smtp_username,
         smtp_password_env, daily_limit, min_gap_seconds, created_at, updated_at)
    values
        (app.current_tenant_id(), :email, :display_name, :smtp_host, :smtp_port, :smtp_security,
         :smtp_username, :smtp_password_env, :daily_limit, :min_gap_seconds,
         coalesce(cast(:now as timestamptz), now()), coalesce(cast(:now as timestamptz), now()))
    on conflict (tenant_id, lower(email)) do update set
        display_name = excluded.display_name, smtp_host = excluded.smtp_host,
        smtp_port = excluded.smtp_port, smtp_security = excluded.smtp_security,
        smtp_username = excluded.smtp_username, smtp_password_env = excluded.smtp_password_env,
        daily_limit = excluded.daily_limit, min_gap_seconds = excluded.min_gap_seconds,
        updated_at = excluded.updated_at,
        -- an account whose address another tenant had first (migration 0019) takes it back
        -- only if that tenant no longer holds it: else the address index refuses this update
        address_revoked_at = null
    returning id
    """
)
#: The index that gives each sender address (lower-cased) to one tenant (migration 0019).
ADDRESS_INDEX = "sender_accounts_address_key"


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


def our_address(text: str) -> str:
    """An address of ours -- a sender account's, a campaign's senders and reply-to -- in the form
    it is stored and compared: email-validator's normalized form (the domain lowercased).
    Raises `EmailNotValidError` saying what is wrong.

    The one rule for these addresses, used by `sender add` and campaign files alike. Of the
    special-use domains only `.test` (RFC 6761: reserved for testing) is accepted, so the demo,
    the tests and a trial setup can send from `sales@acme.test` through the local sink; the
    others (`.local`, `.localhost`, `.invalid`, `.arpa`, `.onion`) are refused. Contacts'
    addresses refuse `.test` too (`engine.ingest.clean`): mail to them cannot be delivered.
    """
    return validate_email(text, check_deliverability=False, test_environment=True).normalized


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
    now: datetime | None = None,
) -> uuid.UUID:
    """Create or update the sender `email` of the transaction's tenant, stamped `now` (the
    database's time when None).

    Refuses a password variable that is not the tenant's own, a login that would go in clear
    text to another machine (see `smtp_server_for`, which checks both again at send time), and
    an address another tenant has: a sender address belongs to one tenant, which reads the mail
    sent to it. That refusal is the database's (`ADDRESS_INDEX`), so two tenants adding the same
    address at once cannot both succeed; it names neither the other tenant nor anything of it.
    """
    try:
        email = our_address(email)
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
    params = {
        "email": email,
        "display_name": display_name,
        "smtp_host": smtp_host,
        "smtp_port": smtp_port,
        "smtp_security": smtp_security,
        "smtp_username": smtp_username,
        "smtp_password_env": smtp_password_env,
        "daily_limit": daily_limit,
        "min_gap_seconds": min_gap_seconds,
        "now": now,
    }
    try:
        with conn.begin_nested():  # the caller's transaction goes on after a refusal
            return conn.execute(_INSERT, params).scalar_one()
    except IntegrityError as exc:
        if getattr(getattr(exc.orig, "diag", None), "constraint_name", None) != ADDRESS_INDEX:
            raise
    raise SenderConfigError(
        f"sender address {email} is already a sender account of another tenant: an address "
        "belongs to one tenant, which receives its replies; use an address of your own "
        "(or have the operator remove it from the tenant that has it)"
    )


# -- the operator's view: list, pause, resume ---------------------------------------------------

# Sends today: the sender's messages queued in the UTC day, except those that failed before any
# SMTP conversation -- the rule of the sender daily limit (engine.sequence.rules).
_LIST = sa.text(
    f"""
    select s.id, s.email, s.display_name, s.smtp_host, s.smtp_port, s.smtp_security,
           s.daily_limit, s.min_gap_seconds, s.is_active,
           (select count(*) from app.sent_emails m
            where m.tenant_id = s.tenant_id and m.sender_account_id = s.id
              and m.queued_at >= :day_start and m.queued_at < :day_end
              and {COUNTS_AGAINST_LIMITS}) as sent_today
    from app.sender_accounts s
    order by lower(s.email)
    """
)
_SET_ACTIVE = sa.text(
    """
    update app.sender_accounts set is_active = :active, updated_at = :now
    where lower(email) = lower(:email)
    returning id, email
    """
)
# Enrollments the engine put off because every sender they could use was paused: due again now
# that one is back (the rotation decides again which sender takes them). Leased ones are a
# worker's, and left alone.
_REDUE_PAUSED = sa.text(
    """
    update app.campaign_contacts cc set next_run_at = :now, wait_reason = null, updated_at = :now
    where cc.status in ('enrolled', 'active') and cc.wait_reason = 'sender paused'
      and cc.next_run_at > :now
      and (cc.lease_expires_at is null or cc.lease_expires_at < :now)
      and cc.campaign_id in (
          select cs.campaign_id from app.campaign_senders cs where cs.sender_account_id = :id
          union
          select st.campaign_id from app.campaign_steps st
          where st.sender_account_id = :id and st.removed_at is null
      )
    """
)


@dataclass(frozen=True)
class SenderUsage:
    """A sender account and its sends today (UTC day) against its daily limit."""

    id: uuid.UUID
    email: str
    display_name: str | None
    smtp_host: str | None
    smtp_port: int | None
    smtp_security: str
    daily_limit: int
    min_gap_seconds: int
    is_active: bool
    sent_today: int


def list_senders(conn: Connection, now: datetime) -> list[SenderUsage]:
    """The tenant's sender accounts with their sends in `now`'s UTC day."""
    day_start = datetime.combine(now.astimezone(UTC).date(), time(), tzinfo=UTC)
    rows = conn.execute(
        _LIST, {"day_start": day_start, "day_end": day_start + timedelta(days=1)}
    ).all()
    return [SenderUsage(**row._mapping) for row in rows]


def set_sender_active(
    conn: Connection, email: str, active: bool, now: datetime
) -> tuple[str, int] | None:
    """Pause (`active=False`) or resume sender `email` (any case); None when the tenant has no
    such sender, else (its address as stored, enrollments made due).

    Resuming makes the enrollments that waited only because every sender was paused due at
    `now`, so the next pass takes them up. An account whose address another tenant had first
    (migration 0019) is not resumed: `SenderConfigError`.
    """
    if active and (found := find_sender(conn, email)) and found.address_revoked_at:
        raise SenderConfigError(
            f"sender {found.email} cannot be resumed: another tenant had registered its "
            "address first (a sender address belongs to one tenant); use an address of your own"
        )
    row = conn.execute(
        _SET_ACTIVE, {"email": email.strip(), "active": active, "now": now}
    ).one_or_none()
    if row is None:
        return None
    if not active:
        return row.email, 0
    return row.email, conn.execute(_REDUE_PAUSED, {"id": row.id, "now": now}).rowcount


_FIND = sa.text(
    """
    select id, email, display_name, smtp_host, smtp_port, smtp_security, smtp_username,
           smtp_password_env, daily_limit, min_gap_seconds, is_active, imap_host, imap_port,
           imap_security, imap_username, imap_password_env, imap_folder, address_revoked_at
    from app.sender_accounts where lower(email) = lower(:email)
    """
)


def find_sender(conn: Connection, email: str) -> sa.Row | None:
    """The tenant's sender account `email` (case-insensitive), or None."""
    return conn.execute(_FIND, {"email": email.strip()}).one_or_none()


# -- the account's mailbox (IMAP) -----------------------------------------------------------------

_SET_MAILBOX = sa.text(
    """
    update app.sender_accounts
    set imap_host = :host, imap_port = :port, imap_security = :security,
        imap_username = :username, imap_password_env = :password_env, imap_folder = :folder,
        updated_at = now()
    where lower(email) = lower(:email)
    returning id
    """
)


@dataclass(frozen=True)
class ImapMailbox:
    """Where a sender account's replies and bounces arrive; `password` read from the account's
    variable at poll time, never stored."""

    host: str
    port: int
    security: str
    username: str
    password: str | None
    folder: str


def set_mailbox(
    conn: Connection,
    email: str,
    *,
    host: str | None,
    port: int | None = None,
    security: str = "tls",
    username: str | None = None,
    password_env: str | None = None,
    folder: str = "INBOX",
) -> uuid.UUID:
    """Give the sender `email` an IMAP mailbox (`host` None: none, its mail is read from the
    local sink). The password variable must be the tenant's own, as for SMTP, and a login never
    goes in clear text to another machine."""
    if security not in ("none", "starttls", "tls"):
        raise SenderConfigError(f"IMAP security {security!r} is not one of none, starttls, tls")
    if host:
        if not username:
            raise SenderConfigError(f"sender {email}: an IMAP mailbox needs a username")
        tenant = conn.execute(_TENANT_NAME).scalar()
        if password_env is not None:
            try:
                check_password_env(password_env, tenant)
            except SenderConfigError as exc:
                raise SenderConfigError(f"sender {email}: {exc}") from None
        if security == "none" and not is_loopback_host(host):
            raise SenderConfigError(
                f"sender {email}: IMAP host {host!r} has security 'none', so the login would "
                "send the password in clear text; use 'starttls' or 'tls'"
            )
    found = conn.execute(
        _SET_MAILBOX,
        {
            "email": email.strip(),
            "host": host or None,
            "port": port if host else None,
            "security": security,
            "username": username if host else None,
            "password_env": password_env if host else None,
            "folder": folder or "INBOX",
        },
    ).scalar()
    if found is None:
        raise SenderConfigError(f"no sender account {email!r} in this tenant")
    return found


def imap_mailbox_for(row: sa.Row, *, tenant: str, env: Mapping[str, str]) -> ImapMailbox:
    """The IMAP mailbox of a sender account row (`imap_host` set), its password from the
    environment; `SenderConfigError` for another tenant's variable, an unset one, or a login
    that would go in clear text to another machine."""
    sender = row.email
    if row.imap_security == "none" and not is_loopback_host(row.imap_host):
        raise SenderConfigError(f"sender {sender}: IMAP login would go in clear text")
    password = None
    if row.imap_password_env:
        try:
            check_password_env(row.imap_password_env, tenant)
        except SenderConfigError as exc:
            raise SenderConfigError(f"sender {sender}: {exc}") from None
        password = env.get(row.imap_password_env)
        if password is None:
            raise SenderConfigError(
                f"sender {sender}: environment variable {row.imap_password_env} "
                "(its IMAP password) is not set"
            )
    default_port = {"none": 143, "starttls": 143, "tls": 993}[row.imap_security]
    return ImapMailbox(
        host=row.imap_host,
        port=row.imap_port or default_port,
        security=row.imap_security,
        username=row.imap_username,
        password=password,
        folder=row.imap_folder or "INBOX",
    )
