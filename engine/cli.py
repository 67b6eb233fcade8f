"""`penguin`: start the system, manage the database and tenants, run the engine by hand."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console

from engine import migrate
from engine.config import ConfigError, Settings
from engine.db import Database, start_embedded_postgres, stop_embedded_postgres
from engine.tenants import DEFAULT_TENANT, all_tenants, create_tenant

app = typer.Typer(
    help="PenguinMails Pipeline: self-hosted, analytics-first email outreach.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database: migrations and the embedded server.", no_args_is_help=True)
tenant_app = typer.Typer(help="Tenants.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(tenant_app, name="tenant")

console = Console()
err = Console(stderr=True)

TenantOption = Annotated[str, typer.Option("--tenant", "-t", help="Tenant to act on.")]


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None


def _database() -> Database:
    return Database(_settings())


@app.command()
def up(
    demo: Annotated[
        bool, typer.Option(help="Load a demo tenant, sender, CSV and campaign.")
    ] = False,
) -> None:
    """Start PostgreSQL, the SMTP sink, the Dagster UI and the dashboards; Ctrl-C stops all."""
    from engine.runtime import Stack

    raise typer.Exit(Stack(_settings(), console, demo=demo).run())


@app.command()
def env() -> None:
    """Print the effective settings as shell exports: eval "$(penguin env)"."""
    from engine.runtime import exported_environment, prepare_dagster_home, shell_exports

    settings = _settings()
    prepare_dagster_home(settings)
    if settings.database_url is None:
        # The exports must point at a running server after this command exits.
        start_embedded_postgres(settings, keep_running=True)
    print(shell_exports(exported_environment(Database(settings))))


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply migrations (creates schema app, the roles and the default tenant)."""
    db = _database()
    revision = migrate.upgrade(db)
    console.print(f"schema app is at revision {revision} (head {migrate.head_revision()})")


@db_app.command("stop")
def db_stop() -> None:
    """Stop the embedded PostgreSQL server left running by `penguin env`."""
    settings = _settings()
    if settings.database_url is not None:
        err.print(
            "[bold red]error:[/] DATABASE_URL is set; the external server is not ours to stop"
        )
        raise typer.Exit(2)
    if not (settings.pgdata / "postmaster.pid").exists():
        console.print(f"the embedded PostgreSQL in {settings.pgdata} is not running")
        return
    start_embedded_postgres(settings)  # attach to it; pgserver stops it if we are its last user
    stop_embedded_postgres(settings)
    if (settings.pgdata / "postmaster.pid").exists():
        console.print(
            "the embedded PostgreSQL is still in use by another penguin process "
            "(penguin up?); it stops when that process ends"
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
def demo() -> None:
    """Load the demo tenant, sender, campaign and sample CSV (as `penguin up --demo` does)."""
    from engine import demo as demo_data

    db = _database()
    migrate.upgrade(db)
    info = demo_data.load_demo(db, datetime.now(UTC))
    console.print(
        f"demo tenant {demo_data.DEMO_TENANT!r} ready; {info.csv_path} waits in the "
        "uploads inbox (materialize `contacts` in Dagster to ingest it)"
    )


@app.command()
def send(
    tenant: TenantOption = DEFAULT_TENANT,
    all_tenants_: Annotated[bool, typer.Option("--all-tenants", help="Every tenant.")] = False,
) -> None:
    """Run the sending engine once over every due enrollment, as send_due_job does."""
    from engine.senders import SmtpServer
    from engine.sending.scheduler import send_due
    from engine.tenants import UnknownTenantError, tenant_id

    db = _database()
    settings = db.settings
    only = None
    if not all_tenants_:
        try:
            only = tenant_id(db.app, tenant)
        except UnknownTenantError as exc:
            err.print(f"[bold red]error:[/] {exc}")
            raise typer.Exit(2) from None
    sink = SmtpServer(settings.smtp_sink_host, settings.smtp_sink_port)
    report = send_due(db.app, sink, datetime.now(UTC), tenants=None if only is None else [only])
    console.print(report.as_dict())
    for line in report.errors:
        err.print(f"[yellow]{line}[/]")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
