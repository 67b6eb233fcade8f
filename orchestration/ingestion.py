"""Ingestion: CSV files in the uploads inbox become contacts in named lists."""

# No `from __future__ import annotations`: Dagster reads these annotations at runtime.
import dagster as dg

from engine.inbox import process_inbox
from orchestration.clock import utcnow
from orchestration.resources import PostgresResource


@dg.asset(
    group_name="ingestion",
    kinds={"csv", "postgres"},
    description=(
        "Contacts of every tenant. Materializing ingests each CSV waiting in "
        "PENGUIN_HOME/uploads/inbox/<tenant>/<list>/ into that tenant's list."
    ),
)
def contacts(context: dg.AssetExecutionContext, postgres: PostgresResource) -> dg.MaterializeResult:
    db = postgres.db
    outcomes = process_inbox(db.app, db.settings.uploads, utcnow())
    rows = []
    for outcome in outcomes:
        where = f"{outcome.file.tenant}/{outcome.file.list_name}/{outcome.file.path.name}"
        if outcome.error:
            context.log.error(f"{where}: {outcome.error} (moved to {outcome.moved_to})")
            rows.append(f"| {where} | failed | | | | | {outcome.error} |")
        else:
            r = outcome.result
            assert r is not None
            context.log.info(
                f"{where}: {r.inserted} new, {r.updated} updated, {r.rejected} rejected"
            )
            rows.append(
                f"| {where} | completed | {r.total_rows} | {r.inserted} | {r.updated} "
                f"| {r.rejected} | |"
            )
    ok = [o.result for o in outcomes if o.result is not None]
    table = "\n".join(
        [
            "| file | status | rows | new | updated | rejected | error |",
            "|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    return dg.MaterializeResult(
        metadata={
            "files": len(outcomes),
            "failed_files": sum(1 for o in outcomes if o.error),
            "rows": sum(r.total_rows for r in ok),
            "inserted": sum(r.inserted for r in ok),
            "updated": sum(r.updated for r in ok),
            "rejected": sum(r.rejected for r in ok),
            "batches": dg.MetadataValue.md(table if rows else "No files were waiting."),
        }
    )


defs = dg.Definitions(assets=[contacts])
