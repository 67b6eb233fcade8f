"""`penguin`: start the system, manage the database and tenants, run the engine by hand."""

from __future__ import annotations

import inspect
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import sqlalchemy as sa
import typer
from rich.console import Console

from engine import migrate
from engine.cli_campaigns import campaign_app, sender_app
from engine.config import ConfigError, Settings
from engine.db import Database, OwnerUnavailableError, connection_parts
from engine.embedded import start_embedded_postgres, stop_kept_server
from engine.tenants import DEFAULT_TENANT, all_tenants, create_tenant, penguin_command

app = typer.Typer(
    help="PenguinMails Pipeline: self-hosted, analytics-first email outreach.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database: migrations and the embedded server.", no_args_is_help=True)
tenant_app = typer.Typer(help="Tenants.", no_args_is_help=True)
uploads_app = typer.Typer(help="Upload batches and their rejects.", no_args_is_help=True)
mail_app = typer.Typer(help="Inbound mail: replies, bounces, complaints.", no_args_is_help=True)
events_app = typer.Typer(
    help="Email service providers' event exports (SES, SendGrid, Mailgun, Postmark).",
    no_args_is_help=True,
)
app.add_typer(db_app, name="db")
app.add_typer(tenant_app, name="tenant")
app.add_typer(uploads_app, name="uploads")
app.add_typer(mail_app, name="mail")
app.add_typer(events_app, name="events")
app.add_typer(campaign_app, name="campaign")
app.add_typer(sender_app, name="sender")

console = Console()
# Errors wrap at a terminal's width, but not when stderr is a file or a pipe (a log, a CI job's
# output): a line per message, whole, for grep.
err = Console(stderr=True, soft_wrap=not sys.stderr.isatty())

TenantOption = Annotated[str, typer.Option("--tenant", "-t", help="Tenant to act on.")]


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None


class SchemaNotReadyError(RuntimeError):
    """The database has no schema `app`, or an older revision than this code needs."""


_HAS_SCHEMA = sa.text("select to_regclass('app.alembic_version') is not null")


def _database(*, migrated: bool = True) -> Database:
    """The database, checked to be at this code's revision unless `migrated=False` (the
    commands that create or upgrade the schema)."""
    db = Database(_settings())
    if migrated:
        _check_schema(db)
    return db


def _check_schema(db: Database) -> None:
    head = migrate.head_revision()
    if db.owner_url is not None:
        current = migrate.current_revision(db)
    else:  # no owner credentials here: the application role can tell whether the schema exists
        with db.app.connect() as conn:
            current = head if conn.execute(_HAS_SCHEMA).scalar_one() else None
    if current is None:
        raise SchemaNotReadyError(
            f"the database ({_where(db.settings)}) has no PenguinMails schema yet; "
            "run `penguin db upgrade` first"
        )
    if current != head:
        raise SchemaNotReadyError(
            f"the database ({_where(db.settings)}) is at schema revision {current}, this "
            f"version of penguin needs {head}; run `penguin db upgrade`"
        )


def _where(settings: Settings) -> str:
    """The server a command talks to, for messages (never with a password)."""
    if settings.database_url:
        from engine.db import sqlalchemy_url

        parts = connection_parts(sqlalchemy_url(settings.database_url))
        return f"{parts.host}:{parts.port}, database {parts.dbname}, from DATABASE_URL"
    if settings.pg_host:
        return (
            f"{settings.pg_host}:{settings.pg_port}, database {settings.pg_database}, "
            "from PENGUIN_PG_HOST"
        )
    return f"embedded PostgreSQL in {settings.pgdata}"


def _tenant(db: Database, name: str):
    from engine.tenants import UnknownTenantError, tenant_id

    try:
        return tenant_id(db.app, name)
    except UnknownTenantError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None


@app.command()
def up(
    demo: Annotated[
        bool, typer.Option(help="Load a demo tenant, sender, CSV and campaign.")
    ] = False,
) -> None:
    """Start PostgreSQL, the SMTP sink, the tracking server, the Dagster UI and the
    dashboards; Ctrl-C stops all."""
    from engine.runtime import Stack

    raise typer.Exit(Stack(_settings(), console, demo=demo).run())


@app.command()
def track(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int | None, typer.Option(help="Port (default PENGUIN_TRACKING_PORT, 8090).")
    ] = None,
) -> None:
    """Run the tracking server alone (opens, clicks, one-click unsubscribes), as `penguin up`
    runs it; links in messages point at PENGUIN_PUBLIC_URL. Ctrl-C stops it after writing the
    events it holds."""
    from engine.tracking.server import serve
    from engine.tracking.tokens import SecretKeyError

    settings = _settings()
    try:
        serve(settings, host=host, port=port)
    except SecretKeyError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None


@mail_app.command("poll")
def mail_poll() -> None:
    """Read the sender accounts' mail once (their IMAP mailboxes, and the local sink's Maildir
    for the others) and apply what arrived:
    replies, auto-replies, bounces, complaints, unsubscribe requests. Each message is applied
    once, however often this runs."""
    from engine.mailboxes.imap import poll_imap
    from engine.mailboxes.maildir import poll_maildir

    db = _database()
    trusted = db.settings.authserv_ids
    report = poll_maildir(db.app, db.settings.maildir, authserv_ids=trusted)
    poll_imap(db.app, report=report, authserv_ids=trusted)
    counts = ", ".join(f"{n} {kind}" for kind, n in sorted(report.applied.items())) or "nothing new"
    console.print(
        f"read {report.read} messages, {report.inbound} to sender accounts: {counts}; "
        f"{report.already} applied before, {report.unmatched} matched no message, "
        f"{report.suppressed} addresses suppressed"
    )
    for line in report.errors:
        err.print(f"[yellow]{line}[/]")
    if report.errors:
        raise typer.Exit(1)


@app.command()
def env() -> None:
    """Print the effective settings as shell exports: eval "$(penguin env)"."""
    from engine.runtime import exported_environment, prepare_dagster_home, shell_exports

    settings = _settings()
    prepare_dagster_home(settings)
    if settings.database_url is None:
        # The exports must point at a running server after this command exits, whatever
        # other commands attach to it and leave meanwhile: it runs until `penguin db stop`.
        start_embedded_postgres(settings, keep_running=True)
    print(shell_exports(exported_environment(Database(settings))))


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply migrations (creates schema app, the roles and the default tenant)."""
    db = _database(migrated=False)
    revision = migrate.upgrade(db)
    console.print(f"schema app is at revision {revision} (head {migrate.head_revision()})")
    from rich.markup import escape

    for warning in migrate.stray_schema_warnings(db):
        err.print(f"[yellow]warning:[/] {escape(warning)}")


@db_app.command("stop")
def db_stop() -> None:
    """Stop the embedded PostgreSQL server left running by `penguin env`."""
    settings = _settings()
    if settings.database_url is not None:
        err.print(
            "[bold red]error:[/] DATABASE_URL is set; the external server is not ours to stop"
        )
        raise typer.Exit(2)
    outcome = stop_kept_server(settings)
    if not outcome.was_running:
        console.print(f"the embedded PostgreSQL in {settings.pgdata} is not running")
    elif outcome.holders:
        console.print(
            "the embedded PostgreSQL is still in use by "
            + ", ".join(outcome.holders)
            + "; it stops when the last of them ends"
        )
    else:
        console.print(f"stopped the embedded PostgreSQL in {settings.pgdata}")


@tenant_app.command("create")
def tenant_create(name: str) -> None:
    """Create tenant NAME (lowercase letters, digits, '-' and '_')."""
    db = _database()
    try:
        tenant_id, new = create_tenant(db.owner, name)
    except ValueError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None
    console.print(f"{'created' if new else 'already exists:'} tenant {name} ({tenant_id})")


@tenant_app.command("list")
def tenant_list() -> None:
    """List tenants."""
    for tenant_id, name in all_tenants(_database().owner):
        console.print(f"{name}\t{tenant_id}")


@app.command()
def generate(
    tenants: Annotated[int, typer.Option(help="Tenants to create (gen-SEED-1, ...).")] = 2,
    contacts: Annotated[int, typer.Option(help="Contacts, split among the tenants.")] = 200_000,
    sends: Annotated[int, typer.Option(help="Messages, split among the tenants.")] = 1_000_000,
    events: Annotated[int, typer.Option(help="About this many engagement events.")] = 10_000_000,
    days: Annotated[int, typer.Option(help="Days back from now the messages spread over.")] = 30,
    seed: Annotated[int, typer.Option(help="Seed: the same seed, the same dataset.")] = 7,
) -> None:
    """Write a realistic dataset straight into the database (tenants, senders, branching
    campaigns, contacts, messages and events at realistic rates, with edge cases planted),
    for the dashboards and the benchmarks. It adds tenants and touches no other."""
    import time

    from engine.generate import GenerateError, Shape, generate

    try:
        shape = Shape(tenants, contacts, sends, events, days, seed)
    except GenerateError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None
    db = _database()
    started = time.monotonic()
    with console.status("generating…") as status:

        def progress(message: str) -> None:
            status.update(f"{message} ({time.monotonic() - started:.0f} s)")

        try:
            done = generate(db, shape, datetime.now(UTC), progress)
        except GenerateError as exc:
            err.print(f"[bold red]error:[/] {exc}")
            raise typer.Exit(2) from None
    console.print(
        f"generated {', '.join(done.tenants)}: {done.contacts:,} contacts, "
        f"{done.messages:,} messages, {done.events:,} events in "
        f"{time.monotonic() - started:.0f} s; run `dbt build` (or the analytics job) for the marts"
    )


@app.command()
def demo() -> None:
    """Load the demo tenant, sender, campaign and sample CSV (as `penguin up --demo` does)."""
    from rich.text import Text

    from engine import demo as demo_data
    from engine.senders import SenderConfigError

    db = _database(migrated=False)
    migrate.upgrade(db)
    try:
        info = demo_data.load_demo(db, datetime.now(UTC))
    except SenderConfigError as exc:  # its sender's address is another tenant's
        err.print(Text("error: ", style="bold red") + Text(str(exc)), soft_wrap=True)
        raise typer.Exit(2) from None
    if info.csv_path is None:
        console.print(
            f"demo tenant {demo_data.DEMO_TENANT!r} was loaded before; its data is left as it "
            "is (the sample CSV is not loaded again)"
        )
        return
    console.print(
        f"demo tenant {demo_data.DEMO_TENANT!r} ready; {info.csv_path} waits in the "
        "uploads inbox, where `penguin up`'s upload_inbox_sensor picks it up"
    )


def _parse_now(value: str | None) -> datetime:
    """`--now`: an ISO 8601 time; one without an offset is UTC."""
    if value is None:
        return datetime.now(UTC)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        err.print(
            f"[bold red]error:[/] --now {value!r} is not an ISO 8601 time "
            "(e.g. 2026-12-01T09:00 or 2026-12-01T09:00+01:00)"
        )
        raise typer.Exit(2) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@app.command()
def send(
    tenant: TenantOption = DEFAULT_TENANT,
    all_tenants_: Annotated[bool, typer.Option("--all-tenants", help="Every tenant.")] = False,
    now: Annotated[
        str | None,
        typer.Option(
            "--now",
            help="Run the pass as if it were this time (ISO 8601; UTC without an offset). "
            "Every decision and every recorded time uses it.",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Change nothing; print what the pass would do.")
    ] = False,
) -> None:
    """Run one engine pass, as send_due_job does: enroll new list members, move wait,
    condition and action steps on, and send the due emails under their throttles."""
    from rich.text import Text

    from engine.senders import SmtpServer
    from engine.sending.scheduler import Config, send_due
    from engine.sequence import rules
    from engine.tracking.links import tracking_for

    at = _parse_now(now)
    db = _database()
    settings = db.settings
    only = None if all_tenants_ else [_tenant(db, tenant)]
    sink = SmtpServer(settings.smtp_sink_host, settings.smtp_sink_port)
    config = Config(tracking=tracking_for(settings))
    report = send_due(db.app, sink, at, config=config, tenants=only, dry_run=dry_run)
    _print_pass(report, at, dry_run)
    # Text, not markup: reasons hold brackets ("[Errno 111]") that rich would take for tags.
    delay = int(rules.SERVER_DOWN_DELAY.total_seconds() // 60)
    for reason, count in report.servers_down.items():
        err.print(Text(f"{count:,} deferred {delay} minutes: {reason}", style="yellow"))
    for line in report.errors:
        err.print(Text(line, style="yellow"))


def _print_pass(report, at: datetime, dry_run: bool) -> None:
    from rich.table import Table

    title = f"{'dry run: nothing changed; ' if dry_run else ''}pass at {at.isoformat()}"
    table = Table(title=title, show_header=True)
    table.add_column("")
    table.add_column("count", justify="right")
    table.add_column("by reason")
    counts = report.as_dict()
    rows = ["enrolled", "advanced"]
    rows += ["would_send"] if dry_run else ["sent", "retrying", "bounced", "failed", "unknown"]
    for name in rows:
        table.add_row(name.replace("_", " "), f"{counts[name]:,}", "")
    for name in ("deferred", "exited"):
        detail = ", ".join(f"{r}: {n:,}" for r, n in counts[f"{name}_by_reason"].items())
        table.add_row(name, f"{counts[name]:,}", detail)
    console.print(table)


@app.command()
def upload(
    file: Annotated[Path, typer.Argument(help="CSV file to load.", show_default=False)],
    list_name: Annotated[str, typer.Option("--list", "-l", help="List to create or append to.")],
    map_: Annotated[
        list[str] | None,
        typer.Option(
            "--map",
            "-m",
            help="COLUMN=FIELD, repeatable; overrides the automatic column mapping. Fields: "
            "email, first_name, last_name, full_name, company, job_title, phone, website, "
            "city, country, timezone, lead_score; or attribute, to keep a column as it is.",
        ),
    ] = None,
    tenant: TenantOption = DEFAULT_TENANT,
    force: Annotated[
        bool, typer.Option(help="Load the file again even if this list already has it.")
    ] = False,
) -> None:
    """Load contacts from a CSV file into a list, and report what became of every row."""
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from engine.ingest import IngestError, ingest_file, parse_mapping
    from engine.text import shown

    db = _database()
    tid = _tenant(db, tenant)
    name = escape(shown(file.name))  # user text: no markup, no terminal control characters
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(f"reading {name}", total=None)

        def progress(stage: str, done: int, total: int | None) -> None:
            if stage == "merging":
                bar.update(task, description="merging into contacts", total=None, completed=0)
            else:
                bar.update(task, total=total, completed=done)

        try:
            result = ingest_file(
                db.app,
                tid,
                file,
                list_name,
                datetime.now(UTC),
                mapping=parse_mapping(map_ or []),
                force=force,
                progress=progress,
            )
        except IngestError as exc:  # every failure to read the file: one line, no traceback
            err.print(f"[bold red]error:[/] {escape(shown(exc, 2000))}")
            raise typer.Exit(1) from None
    if result.already_loaded:
        console.print(
            f"{name} was already loaded into list '{escape(shown(result.list_name))}' "
            f"(batch {result.batch_id}); nothing changed. Use --force to load it again."
        )
        return
    _print_result(result, tenant)


def _print_result(result, tenant: str) -> None:
    from rich.markup import escape
    from rich.table import Table

    from engine.text import shown

    fmt = result.file_format
    console.print(
        f"batch {result.batch_id}: {escape(shown(result.file_name))} → list "
        f"'{escape(shown(result.list_name))}' "
        f"({fmt.get('encoding')}, delimiter {fmt.get('delimiter')!r})"
    )
    table = Table(show_header=False, box=None, pad_edge=False)
    labels = {
        "total": "rows",
        "inserted": "new contacts",
        "updated": "updated",
        "unchanged": "unchanged",
        "duplicates": "duplicates in file",
        "rejected": "rejected",
        "suppressed": "suppressed (not emailed)",
        "role_addresses": "role addresses",
    }
    for key, value in result.counts().items():
        table.add_row(labels[key], f"{value:,}")
    console.print(table)
    if result.rejected:
        console.print(
            "see the rejects with: "
            + penguin_command(f"uploads rejects {result.batch_id} -o rejects.csv", tenant)
        )
    _not_kept(result.rejected, "rejected lines")


@uploads_app.command("list")
def uploads_list(
    tenant: TenantOption = DEFAULT_TENANT,
    limit: Annotated[int, typer.Option(help="How many of the latest batches.")] = 20,
) -> None:
    """The latest upload batches of a tenant, with their status and counts."""
    from rich.table import Table
    from rich.text import Text

    from engine.db import tenant_transaction
    from engine.ingest.store import recent_batches
    from engine.text import shown

    db = _database()
    with tenant_transaction(db.app, _tenant(db, tenant)) as conn:
        rows = recent_batches(conn, limit)
    table = Table(
        "batch",
        "created",
        "file",
        "list",
        "via",
        "status",
        "rows",
        "new",
        "updated",
        "rejected",
        "error",
    )
    for row in rows:
        table.add_row(
            str(row.id),
            f"{row.created_at:%Y-%m-%d %H:%M}",
            Text(shown(row.file_name)),  # Text: user data is never read as markup
            Text(shown(row.list_name or "")),
            row.source,
            row.status,
            f"{row.total_rows:,}",
            f"{row.inserted_count:,}",
            f"{row.updated_count:,}",
            f"{row.rejected_count:,}",
            Text(shown(row.error or "", 300)),
        )
    console.print(table)


@uploads_app.command("rejects")
def uploads_rejects(
    batch: Annotated[
        str,
        typer.Argument(
            help="Batch id, or its first 4 or more hex digits (see `penguin uploads list`)."
        ),
    ],
    tenant: TenantOption = DEFAULT_TENANT,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file, not stdout.")
    ] = None,
) -> None:
    """A batch's rejected lines as CSV (line, reason, raw line), safe to open in a spreadsheet."""
    from rich.markup import escape

    from engine.db import tenant_transaction
    from engine.ingest.rejects import rejects_frame, safe_csv
    from engine.ingest.store import batches_by_prefix
    from engine.text import shown

    db = _database()
    with tenant_transaction(db.app, _tenant(db, tenant)) as conn:
        row = _one_batch(
            lambda: batches_by_prefix(conn, batch),
            batch,
            f"tenant {tenant} has no upload batch",
            penguin_command("uploads list", tenant),
            lambda r: f"{escape(shown(r.file_name))} → {escape(shown(r.list_name or ''))}",
        )
        frame = rejects_frame(conn, row.id)
    if output is None:
        sys.stdout.write(safe_csv(frame))
    else:
        _write_output(output, safe_csv(frame))
        console.print(f"wrote {frame.height:,} rejected line(s) to {escape(shown(output))}")
    _not_kept(row.rejected_count, "rejected lines")


def _not_kept(rejected: int, noun: str) -> None:
    """Tell (on stderr, so a CSV on stdout stays clean) how many rejects were not kept."""
    from engine.ingest.rejects import not_kept_note

    if note := not_kept_note(rejected or 0, noun):
        err.print(f"note: {note}")


def _write_output(path: Path, text: str) -> None:
    """Write a command's `-o` file, or exit 1 saying in one line why it cannot be written."""
    from rich.markup import escape

    from engine.userfiles import UserFileError, write_output

    try:
        write_output(path, text)
    except UserFileError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}")
        raise typer.Exit(1) from None


def _one_batch(find, given: str, none_found: str, list_command: str, describe, noun="batch id"):
    """The one batch `find()` returns for the id prefix `given`; exits 2 saying why when the
    prefix is not one, names none, or names several."""
    from rich.markup import escape

    from engine.text import shown

    shown_given = escape(shown(given))
    try:
        found = find()
    except ValueError as exc:
        err.print(f"[bold red]error:[/] '{shown_given}' {exc}")
        raise typer.Exit(2) from None
    if not found:
        err.print(f"[bold red]error:[/] {none_found} '{shown_given}'; see `{list_command}`")
        raise typer.Exit(2)
    if len(found) > 1:
        candidates = "\n".join(
            f"  {row.id}  {row.created_at:%Y-%m-%d %H:%M}  {describe(row)}" for row in found
        )
        err.print(
            f"[bold red]error:[/] '{shown_given}' is the start of more than one {noun}; "
            f"give more of it:\n{candidates}"
        )
        raise typer.Exit(2)
    return found[0]


@events_app.command("import")
def events_import(
    file: Annotated[Path, typer.Argument(help="The export: JSON lines, a JSON array or CSV.")],
    format_: Annotated[
        str,
        typer.Option(
            "--format", "-f", help="Whose webhook events: ses, sendgrid, mailgun or postmark."
        ),
    ],
    tenant: TenantOption = DEFAULT_TENANT,
    force: Annotated[
        bool, typer.Option(help="Import the file again even if it was imported before.")
    ] = False,
) -> None:
    """Import a provider's delivered, open, click, bounce, complaint and unsubscribe events,
    matched to sent messages by Message-ID, and report what became of every record."""
    from rich.markup import escape
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

    from engine.provider_events import EventImportError, import_events
    from engine.text import shown

    db = _database()
    tid = _tenant(db, tenant)
    name = escape(shown(file.name))
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(f"reading {name}", total=None)

        def progress(stage: str, done: int, total: int | None) -> None:
            if stage == "writing":
                bar.update(task, description="writing events", total=None, completed=0)
            else:
                bar.update(task, total=total, completed=done)

        try:
            result = import_events(
                db.app, tid, file, format_, datetime.now(UTC), force=force, progress=progress
            )
        except EventImportError as exc:
            err.print(f"[bold red]error:[/] {escape(shown(exc, 2000))}")
            raise typer.Exit(1) from None
    if result.already_imported:
        console.print(
            f"{name} was already imported (import {result.import_id}); nothing changed. "
            "Use --force to import it again."
        )
        return
    _print_import(result, tenant)


def _print_import(result, tenant: str) -> None:
    from rich.markup import escape
    from rich.table import Table

    from engine.text import shown

    name = escape(shown(result.file_name))
    console.print(f"import {result.import_id}: {name} ({result.provider})")
    table = Table(show_header=False, box=None, pad_edge=False)
    labels = {
        "total": "records",
        "imported": "events imported",
        "duplicates": "duplicates (imported before)",
        "skipped": "skipped (kinds not recorded)",
        "rejected": "rejected",
        "unmatched": "  of them matching no message",
        "suppressed": "addresses suppressed",
    }
    for key, value in result.counts().items():
        table.add_row(labels[key], f"{value:,}")
    for kind, count in sorted(result.event_counts.items()):
        table.add_row(f"  {kind}", f"{count:,}")
    console.print(table)
    if result.rejected:
        console.print(
            "see the rejects with: "
            + penguin_command(f"events rejects {result.import_id} -o rejects.csv", tenant)
        )
    _not_kept(result.rejected, "rejected records")


@events_app.command("list")
def events_list(
    tenant: TenantOption = DEFAULT_TENANT,
    limit: Annotated[int, typer.Option(help="How many of the latest imports.")] = 20,
) -> None:
    """The latest event imports of a tenant, with their status and counts."""
    from rich.table import Table
    from rich.text import Text

    from engine.db import tenant_transaction
    from engine.provider_events.imports import recent_imports
    from engine.text import shown

    db = _database()
    with tenant_transaction(db.app, _tenant(db, tenant)) as conn:
        rows = recent_imports(conn, limit)
    table = Table(
        "import",
        "created",
        "file",
        "format",
        "via",
        "status",
        "records",
        "imported",
        "duplicates",
        "rejected",
        "error",
    )
    for row in rows:
        table.add_row(
            str(row.id),
            f"{row.created_at:%Y-%m-%d %H:%M}",
            Text(shown(row.file_name)),
            row.provider,
            row.source,
            row.status,
            f"{row.total_records:,}",
            f"{row.imported_count:,}",
            f"{row.duplicate_count:,}",
            f"{row.rejected_count:,}",
            Text(shown(row.error or "", 300)),
        )
    console.print(table)


@events_app.command("rejects")
def events_rejects(
    import_id: Annotated[
        str,
        typer.Argument(help="Import id, or its first 4 or more hex digits (penguin events list)."),
    ],
    tenant: TenantOption = DEFAULT_TENANT,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file, not stdout.")
    ] = None,
) -> None:
    """An import's rejected records as CSV (line, reason, raw record), safe for a spreadsheet."""
    import polars as pl
    from rich.markup import escape

    from engine.db import tenant_transaction
    from engine.ingest.rejects import safe_csv
    from engine.provider_events.imports import imports_by_prefix, rejects
    from engine.text import shown

    db = _database()
    with tenant_transaction(db.app, _tenant(db, tenant)) as conn:
        row = _one_batch(
            lambda: imports_by_prefix(conn, import_id),
            import_id,
            f"tenant {tenant} has no event import",
            penguin_command("events list", tenant),
            lambda r: f"{escape(shown(r.file_name))} ({r.provider})",
            noun="import id",
        )
        frame = pl.DataFrame(
            [tuple(r) for r in rejects(conn, row.id)],
            schema={"line_number": pl.Int64, "reason": pl.String, "raw_row": pl.String},
            orient="row",
        )
    if output is None:
        sys.stdout.write(safe_csv(frame))
    else:
        _write_output(output, safe_csv(frame))
        console.print(f"wrote {frame.height:,} rejected record(s) to {escape(shown(output))}")
    _not_kept(row.rejected_count, "rejected records")


def _unwrap_help(group: typer.Typer) -> None:
    """Every command's help as paragraphs of one line each, for rich to wrap at word boundaries
    at the terminal's width.

    Docstrings are wrapped at the source's line length; typer's rich commands panel (0.29) keeps
    those line breaks, and a command's own help keeps them after its first paragraph, so a line
    broke mid-sentence wherever the source did. A blank line still separates paragraphs.
    """
    for command in group.registered_commands:
        text = command.help or inspect.getdoc(command.callback) or ""
        command.help = "\n\n".join(" ".join(p.split()) for p in text.split("\n\n"))
    for sub in group.registered_groups:
        if sub.typer_instance is not None:
            _unwrap_help(sub.typer_instance)


_unwrap_help(app)


def main() -> None:
    """The console script: failures a user can meet outside a working database (not migrated,
    not reachable, no owner credentials here) end in one line that says what to do."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except (SchemaNotReadyError, OwnerUnavailableError) as exc:
        err.print(f"[bold red]error:[/] {exc}")
        sys.exit(1)
    except sa.exc.OperationalError as exc:
        reason = str(exc.orig or exc).strip().splitlines()[0] if str(exc.orig or exc) else ""
        settings = Settings.from_env()
        err.print(
            f"[bold red]error:[/] cannot reach PostgreSQL ({_where(settings)}): {reason}",
            soft_wrap=True,
        )
        sys.exit(1)
