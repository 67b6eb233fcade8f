"""`penguin campaign ...` and `penguin sender ...`: campaigns as files, sender accounts.

Registered on the main app in `engine/cli.py`. Helpers (`_database`, `_tenant`, the consoles)
are imported from there inside each command: `engine.cli` imports this module at its top.
Every failure a user can cause ends with exit code 2 and says what is wrong and where.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import sqlalchemy as sa
import typer
from rich.text import Text

from engine.tenants import DEFAULT_TENANT

_LAUNCHED = sa.text(
    """
    select c.status, (select count(*) from app.campaign_contacts cc where cc.campaign_id = c.id)
    from app.campaigns c where c.id = :id
    """
)

campaign_app = typer.Typer(
    help="Campaigns: define them in YAML files, list, clone, approve.", no_args_is_help=True
)
sender_app = typer.Typer(help="Sender accounts: who mail goes out as.", no_args_is_help=True)

TenantOption = Annotated[str, typer.Option("--tenant", "-t", help="Tenant to act on.")]

NowOption = Annotated[
    str | None,
    typer.Option("--now", help="As if it were this time (ISO 8601; UTC without an offset)."),
]


class Security(StrEnum):
    none = "none"
    starttls = "starttls"
    tls = "tls"


def _fail(lines: list[str] | str, code: int = 2) -> typer.Exit:
    """Print an error (user text, never markup) and return the exit to raise."""
    from engine.cli import err

    lines = [lines] if isinstance(lines, str) else lines
    err.print(Text("error: ", style="bold red") + Text(lines[0]), soft_wrap=True)
    for line in lines[1:]:
        err.print(Text(f"  {line}"), soft_wrap=True)
    return typer.Exit(code)


def _problems(exc: Exception) -> typer.Exit:
    from engine.campaign_files import CampaignFileError

    if isinstance(exc, CampaignFileError):
        count = len(exc.problems)
        head = f"{count} problem{'s' if count != 1 else ''}" + (
            f" in {exc.source}" if exc.source else ""
        )
        return _fail([head + ":", *exc.problems] if count > 1 else exc.problems)
    return _fail(str(exc))


def _notes(notes: tuple[str, ...] | list[str]) -> None:
    from engine.cli import err

    for note in notes:
        err.print(Text("note: ", style="yellow") + Text(note), soft_wrap=True)


def _now() -> datetime:
    return datetime.now(UTC)


# -- campaigns ----------------------------------------------------------------------------------


@campaign_app.command("apply")
def campaign_apply(
    file: Annotated[Path, typer.Argument(help="Campaign file (YAML).", show_default=False)],
    tenant: TenantOption = DEFAULT_TENANT,
) -> None:
    """Create or update the campaign a YAML file defines (the whole file is checked first)."""
    from engine.campaign_files import CampaignFileError, apply, approval_state, load
    from engine.cli import _database, _tenant, console
    from engine.db import tenant_transaction

    try:
        spec = load(file)
    except CampaignFileError as exc:
        raise _problems(exc) from None
    db = _database()
    tid = _tenant(db, tenant)
    try:
        with tenant_transaction(db.app, tid) as conn:
            result = apply(conn, spec, _now())
            approved, detail = approval_state(conn, result.campaign_id)
    except CampaignFileError as exc:
        raise _problems(exc) from None
    console.print(Text(result.summary()))
    _notes(result.notes)
    if not approved:
        _notes([f"launch needs approval: {detail}"])


@campaign_app.command("export")
def campaign_export(
    name: Annotated[str, typer.Argument(help="Campaign name.", show_default=False)],
    tenant: TenantOption = DEFAULT_TENANT,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file, not stdout.")
    ] = None,
) -> None:
    """Print a campaign's definition as YAML; applying it again changes nothing.

    It is what was last applied, with every default written out."""
    from engine.campaign_files import CampaignFileError, export
    from engine.cli import _database, _tenant, console
    from engine.db import tenant_transaction

    db = _database()
    try:
        with tenant_transaction(db.app, _tenant(db, tenant)) as conn:
            text = export(conn, name)
    except CampaignFileError as exc:
        raise _problems(exc) from None
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")
        console.print(Text(f"wrote campaign {name} to {output}"))


@campaign_app.command("list")
def campaign_list(now: NowOption = None, tenant: TenantOption = DEFAULT_TENANT) -> None:
    """The tenant's campaigns: status, list, steps, enrollments and sends today (each campaign's
    local day, as `campaign status` and the daily limit count it)."""
    from rich.table import Table

    from engine.campaign_files import list_campaigns
    from engine.cli import _database, _parse_now, _tenant, console
    from engine.db import tenant_transaction
    from engine.text import shown

    db = _database()
    with tenant_transaction(db.app, _tenant(db, tenant)) as conn:
        rows = list_campaigns(conn, _parse_now(now))
    table = Table("campaign", "status", "list", "steps", "enrolled", "sent today")
    for row in rows:
        limit = f" / {row.daily_limit:,}" if row.daily_limit is not None else ""
        table.add_row(
            Text(shown(row.name)),
            row.status,
            Text(shown(row.list_name or "")),
            f"{row.steps:,}",
            f"{row.enrolled:,}",
            f"{row.sent_today:,}{limit}",
        )
    console.print(table)


@campaign_app.command("clone")
def campaign_clone(
    name: Annotated[str, typer.Argument(help="Campaign to copy.", show_default=False)],
    new_name: Annotated[str, typer.Argument(help="Name of the copy.", show_default=False)],
    tenant: TenantOption = DEFAULT_TENANT,
) -> None:
    """Copy a campaign's definition to a new draft campaign (no enrollments, no approvals)."""
    from engine.campaign_files import CampaignFileError, clone
    from engine.cli import _database, _tenant, console
    from engine.db import tenant_transaction

    db = _database()
    try:
        with tenant_transaction(db.app, _tenant(db, tenant)) as conn:
            result = clone(conn, name, new_name, _now())
    except CampaignFileError as exc:
        raise _problems(exc) from None
    console.print(Text(f"cloned {name} as draft campaign {result.name}"))
    _notes(result.notes)


ByOption = Annotated[
    str, typer.Option("--by", help="Who decides (a name or address).", show_default=False)
]


@campaign_app.command("approve")
def campaign_approve(
    name: Annotated[str, typer.Argument(help="Campaign name.", show_default=False)],
    by: ByOption,
    comment: Annotated[str | None, typer.Option("--comment", help="Why, or on what terms.")] = None,
    tenant: TenantOption = DEFAULT_TENANT,
) -> None:
    """Approve a campaign as currently defined (a later change to its file needs a new one)."""
    _decide(name, "approve", by, comment, tenant)


@campaign_app.command("reject")
def campaign_reject(
    name: Annotated[str, typer.Argument(help="Campaign name.", show_default=False)],
    by: ByOption,
    comment: Annotated[
        str, typer.Option("--comment", help="What must change.", show_default=False)
    ],
    tenant: TenantOption = DEFAULT_TENANT,
) -> None:
    """Reject a campaign as currently defined, saying what must change."""
    _decide(name, "reject", by, comment, tenant)


def _decide(name: str, action: str, by: str, comment: str | None, tenant: str) -> None:
    from engine.campaign_files import CampaignFileError, approve, reject
    from engine.cli import _database, _tenant, console
    from engine.db import tenant_transaction

    db = _database()
    now = _now()
    try:
        with tenant_transaction(db.app, _tenant(db, tenant)) as conn:
            if action == "approve":
                decision = approve(conn, name, by, now, comment)
            else:
                decision = reject(conn, name, by, comment or "", now)
    except CampaignFileError as exc:
        raise _problems(exc) from None
    console.print(
        Text(f"{decision.status} campaign {name} (definition {decision.spec_sha256[:12]}) by {by}")
    )
    if decision.note:
        _notes([decision.note])


# -- lifecycle ------------------------------------------------------------------------------------

NameArgument = Annotated[str, typer.Argument(help="Campaign name.", show_default=False)]


def _lifecycle(name: str, tenant: str, act) -> str:
    """Run `act(conn, campaign_id, now)` in the tenant's transaction; a refusal exits 2."""
    from engine.campaigns import CampaignError, campaign_named
    from engine.cli import _database, _tenant
    from engine.db import tenant_transaction

    db = _database()
    try:
        with tenant_transaction(db.app, _tenant(db, tenant)) as conn:
            return act(conn, campaign_named(conn, name).id, _now())
    except CampaignError as exc:
        raise _fail(f"campaign {name}: {exc}") from None


@campaign_app.command("launch")
def campaign_launch(name: NameArgument, tenant: TenantOption = DEFAULT_TENANT) -> None:
    """Validate, enroll the list's members and start (`scheduled` until its start_at)."""
    from engine.campaigns import launch_campaign
    from engine.cli import console

    def launch(conn, campaign_id, now) -> str:
        check = launch_campaign(conn, campaign_id, now)
        status, enrolled = conn.execute(_LAUNCHED, {"id": campaign_id}).one()
        return f"campaign {name} is {status}, {enrolled:,} enrolled; {check.summary()}"

    console.print(Text(_lifecycle(name, tenant, launch)))


@campaign_app.command("pause")
def campaign_pause(name: NameArgument, tenant: TenantOption = DEFAULT_TENANT) -> None:
    """Stop sending before the next message, also in a pass already under way."""
    from engine.campaigns import pause_campaign
    from engine.cli import console

    status = _lifecycle(name, tenant, pause_campaign)
    console.print(Text(f"campaign {name} is {status}"))


@campaign_app.command("resume")
def campaign_resume(name: NameArgument, tenant: TenantOption = DEFAULT_TENANT) -> None:
    """Start sending again where it stopped."""
    from engine.campaigns import resume_campaign
    from engine.cli import console

    status = _lifecycle(name, tenant, resume_campaign)
    console.print(Text(f"campaign {name} is {status}"))


@campaign_app.command("status")
def campaign_status(
    name: NameArgument, now: NowOption = None, tenant: TenantOption = DEFAULT_TENANT
) -> None:
    """Enrollments per step and state, sends today against the limits, what is waiting and why."""
    from rich.table import Table

    from engine.campaigns import campaign_status as status_of
    from engine.cli import _parse_now, console
    from engine.text import shown

    at = _parse_now(now)
    status = _lifecycle(name, tenant, lambda conn, cid, _: status_of(conn, cid, at))
    console.print(
        Text(
            f"campaign {shown(status.name)}: {status.status}; sent today "
            f"{status.sent_today:,} / {status.daily_limit:,} ({status.timezone} day); next due "
            f"{status.next_due.isoformat() if status.next_due else 'nothing'}"
        )
    )
    steps = Table("step", "type", "state", "enrollments", title="enrollments")
    for key, kind, state, count in status.steps:
        steps.add_row(Text(shown(key)), kind, state or "", f"{count:,}")
    waiting = Table("waiting for", "enrollments", "earliest", title="still to run")
    for reason, count, until in status.waiting:
        waiting.add_row(reason, f"{count:,}", until.isoformat() if until else "")
    senders = Table("sender", "sent today (UTC)", "daily limit", "state", title="senders")
    for email, sent, limit, active in status.senders:
        senders.add_row(Text(shown(email)), f"{sent:,}", f"{limit:,}", "" if active else "paused")
    console.print(steps, waiting, senders)


@campaign_app.command("forecast")
def campaign_forecast(
    name: NameArgument,
    days: Annotated[int, typer.Option("--days", min=1, max=366, help="Days to show.")] = 30,
    now: NowOption = None,
    tenant: TenantOption = DEFAULT_TENANT,
) -> None:
    """Messages per day and step under the limits, windows and waits (no replies or bounces
    assumed), and the day the last one goes out."""
    from engine.cli import _database, _parse_now, _tenant, console
    from engine.db import tenant_transaction
    from engine.sequence.forecast import ForecastError, forecast_named, render_forecast

    at = _parse_now(now)
    db = _database()
    try:
        with tenant_transaction(db.app, _tenant(db, tenant)) as conn:
            result = forecast_named(conn, name, at, days=days)
    except ForecastError as exc:
        raise _fail(str(exc)) from None
    console.print(render_forecast(result))


# -- senders ------------------------------------------------------------------------------------


@sender_app.command("add")
def sender_add(
    email: Annotated[str, typer.Argument(help="The address mail goes out from.")],
    name: Annotated[
        str | None, typer.Option("--name", help="Display name (From: NAME <EMAIL>).")
    ] = None,
    smtp_host: Annotated[
        str | None,
        typer.Option(
            "--smtp-host",
            help="SMTP server. Without one, mail goes to the local sink; '' goes back to it.",
        ),
    ] = None,
    smtp_port: Annotated[
        int | None,
        typer.Option("--smtp-port", min=1, max=65535, help="Default: 25, 587 or 465 by security."),
    ] = None,
    security: Annotated[
        Security | None, typer.Option("--security", help="Default: starttls.")
    ] = None,
    username: Annotated[str | None, typer.Option("--username", help="SMTP login.")] = None,
    password_env: Annotated[
        str | None,
        typer.Option(
            "--password-env",
            help="Environment variable holding the SMTP password: PENGUIN_SMTP_<TENANT>__<NAME>.",
        ),
    ] = None,
    daily_limit: Annotated[
        int | None, typer.Option("--daily-limit", min=1, help="Messages per UTC day (200).")
    ] = None,
    min_gap: Annotated[
        int | None,
        typer.Option("--min-gap", min=0, help="Seconds between two of its messages (60)."),
    ] = None,
    imap_host: Annotated[
        str | None,
        typer.Option(
            "--imap-host",
            help="IMAP server of its mailbox (replies, bounces). Without one, its mail is read "
            "from the local sink; '' goes back to it.",
        ),
    ] = None,
    imap_port: Annotated[
        int | None,
        typer.Option("--imap-port", min=1, max=65535, help="Default: 993 (tls) or 143."),
    ] = None,
    imap_security: Annotated[
        Security | None, typer.Option("--imap-security", help="Default: tls.")
    ] = None,
    imap_username: Annotated[
        str | None, typer.Option("--imap-username", help="IMAP login (default: the address).")
    ] = None,
    imap_password_env: Annotated[
        str | None,
        typer.Option(
            "--imap-password-env",
            help="Environment variable holding the IMAP password: PENGUIN_SMTP_<TENANT>__<NAME>.",
        ),
    ] = None,
    imap_folder: Annotated[
        str | None, typer.Option("--imap-folder", help="Folder to read (INBOX).")
    ] = None,
    tenant: TenantOption = DEFAULT_TENANT,
) -> None:
    """Add a sender account, or change the settings given of an existing one (the others
    stay as they are)."""
    from engine.cli import _database, _tenant, console
    from engine.db import tenant_transaction
    from engine.senders import SenderConfigError, create_sender, find_sender, set_mailbox

    db = _database()
    try:
        with tenant_transaction(db.app, _tenant(db, tenant)) as conn:
            old = find_sender(conn, email)

            def keep(given, column, default):
                if given is not None:
                    return given
                return getattr(old, column) if old is not None else default

            host = keep(smtp_host, "smtp_host", None) or None
            server_options = {
                "--smtp-port": smtp_port,
                "--username": username,
                "--password-env": password_env,
            }
            if host is None and any(v is not None for v in server_options.values()):
                given = ", ".join(k for k, v in server_options.items() if v is not None)
                raise SenderConfigError(
                    f"{given} need --smtp-host: without a host, mail goes to the local sink"
                )
            settings = {
                "display_name": keep(name, "display_name", None),
                "smtp_host": host,
                "smtp_port": keep(smtp_port, "smtp_port", None) if host else None,
                "smtp_security": (
                    security.value if security else keep(None, "smtp_security", "starttls")
                ),
                "smtp_username": keep(username, "smtp_username", None) if host else None,
                "smtp_password_env": keep(password_env, "smtp_password_env", None)
                if host
                else None,
                "daily_limit": keep(daily_limit, "daily_limit", 200),
                "min_gap_seconds": keep(min_gap, "min_gap_seconds", 60),
            }
            create_sender(conn, email, **settings)
            imap_given = (
                imap_host,
                imap_port,
                imap_security,
                imap_username,
                imap_password_env,
                imap_folder,
            )
            if any(v is not None for v in imap_given):
                imap = keep(imap_host, "imap_host", None) or None
                set_mailbox(
                    conn,
                    email,
                    host=imap,
                    port=keep(imap_port, "imap_port", None),
                    security=imap_security.value
                    if imap_security
                    else keep(None, "imap_security", "tls"),
                    username=keep(imap_username, "imap_username", None) or email,
                    password_env=keep(imap_password_env, "imap_password_env", None),
                    folder=keep(imap_folder, "imap_folder", "INBOX"),
                )
            saved = find_sender(conn, email)
    except SenderConfigError as exc:
        raise _fail(str(exc)) from None
    where = (
        "the local sink"
        if saved.smtp_host is None
        else f"{saved.smtp_host}:{saved.smtp_port or 'default port'} ({saved.smtp_security})"
    )
    mailbox = (
        "the local sink"
        if saved.imap_host is None
        else f"imaps://{saved.imap_host}:{saved.imap_port or 993}/{saved.imap_folder}"
        if saved.imap_security == "tls"
        else f"imap://{saved.imap_host}:{saved.imap_port or 143}/{saved.imap_folder} "
        f"({saved.imap_security})"
    )
    console.print(
        Text(
            f"{'updated' if old is not None else 'added'} sender {saved.email} via {where}, "
            f"{saved.daily_limit:,} a day, {saved.min_gap_seconds} s apart"
            + ("" if saved.is_active else " (paused)")
            + f"; mail read from {mailbox}"
        )
    )


@sender_app.command("list")
def sender_list(tenant: TenantOption = DEFAULT_TENANT) -> None:
    """The tenant's sender accounts with today's sends (UTC day) against their daily limit."""
    from rich.table import Table

    from engine.cli import _database, _tenant, console
    from engine.db import tenant_transaction
    from engine.senders import list_senders
    from engine.text import shown

    db = _database()
    with tenant_transaction(db.app, _tenant(db, tenant)) as conn:
        senders = list_senders(conn, _now())
    table = Table("sender", "name", "server", "sent today", "min gap", "state")
    for s in senders:
        server = (
            "local sink"
            if s.smtp_host is None
            else f"{s.smtp_host}:{s.smtp_port or 'default'} ({s.smtp_security})"
        )
        table.add_row(
            Text(shown(s.email)),
            Text(shown(s.display_name or "")),
            Text(shown(server)),
            f"{s.sent_today:,} / {s.daily_limit:,}",
            f"{s.min_gap_seconds} s",
            "active" if s.is_active else "paused",
        )
    console.print(table)


def _set_active(email: str, active: bool, tenant: str) -> None:
    from engine.cli import _database, _tenant, console
    from engine.db import tenant_transaction
    from engine.senders import SenderConfigError, set_sender_active
    from engine.tenants import penguin_command, shell_word
    from engine.text import shown

    db = _database()
    try:
        with tenant_transaction(db.app, _tenant(db, tenant)) as conn:
            found = set_sender_active(conn, email, active, _now())
    except SenderConfigError as exc:
        raise _fail(str(exc)) from None
    if found is None:
        raise _fail(
            f"tenant {tenant} has no sender account {shown(email)}; "
            f"see `{penguin_command('sender list', tenant)}`"
        )
    email, redue = found
    if active:
        waiting = f"; {redue:,} enrollment(s) waiting for a sender are due again" if redue else ""
        console.print(Text(f"resumed sender {shown(email)}{waiting}"))
    else:
        console.print(
            Text(
                f"paused sender {shown(email)}: nothing goes out from it until "
                f"`{penguin_command(f'sender resume {shell_word(email)}', tenant)}`"
            )
        )


@sender_app.command("pause")
def sender_pause(
    email: Annotated[str, typer.Argument(help="Sender address.", show_default=False)],
    tenant: TenantOption = DEFAULT_TENANT,
) -> None:
    """Stop sending from an account (its campaigns rotate to their other senders)."""
    _set_active(email, False, tenant)


@sender_app.command("resume")
def sender_resume(
    email: Annotated[str, typer.Argument(help="Sender address.", show_default=False)],
    tenant: TenantOption = DEFAULT_TENANT,
) -> None:
    """Send from a paused account again."""
    _set_active(email, True, tenant)
