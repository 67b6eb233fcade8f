"""Ingestion: CSV files in the uploads inbox become upload batches, contacts and lists.

`upload_inbox_sensor` asks for one run per waiting file, keyed by the file, its size and
mtime, so a second tick, or a retried run, never loads a file twice (a run hashes its file and
skips content already loaded into that list). The sensor only looks: the
`uploads` multi-asset ingests the file (or, materialized by hand, every waiting file) through
`engine.ingest`, moves it on (to `processed/`, also when its content was loaded before, or
to `failed/`) and reports on the three tables it writes; a run with a file that could not be
loaded ends in failure, naming the file and why.
"""

# No `from __future__ import annotations`: Dagster reads these annotations at runtime.
import os
import time

import dagster as dg
import pydantic
import sqlalchemy as sa

from engine.inbox import InboxOutcome, inbox_file, pending_files, process_file, read_file
from orchestration import analytics
from orchestration.clock import utcnow
from orchestration.resources import PostgresResource
from orchestration.sending import SENDS_TAGS

GROUP = "ingestion"


class UploadConfig(dg.Config):
    path: str = pydantic.Field(
        default="",
        description="One file in the uploads inbox (<tenant>/<list>/<file>); empty ingests "
        "every file waiting there.",
    )


_PREVIEW_COLUMNS = ("email", "first_name", "last_name", "company", "job_title", "country")
_PREVIEW = sa.text(
    """
    select email, first_name, last_name, company, job_title, country
    from app.contacts where upload_batch_id = :batch_id order by created_at limit 5
    """
)
_CONTACT_TOTALS = sa.text(
    """
    select count(*) as contacts,
           count(*) filter (where is_role_address) as role_addresses,
           count(*) filter (where status <> 'active') as suppressed
    from app.contacts
    """
)
_LIST_SIZES = sa.text(
    """
    select t.name as tenant, l.name as list, count(m.contact_id) as members
    from app.contact_lists l join app.tenants t on t.id = l.tenant_id
    left join app.contact_list_members m on m.list_id = l.id
    group by 1, 2 order by 1, 2
    """
)


def _table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in rows]
    return "\n".join(lines)


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            "upload_batches",
            group_name=GROUP,
            kinds={"csv", "postgres"},
            description="One row per uploaded file: how it was read, its counts and status; "
            "its rejected lines in upload_rejects.",
        ),
        dg.AssetSpec(
            "contacts",
            deps=["upload_batches"],
            group_name=GROUP,
            kinds={"postgres"},
            description="Contacts of every tenant, one per address (compared case-insensitively).",
        ),
        dg.AssetSpec(
            "contact_lists",
            deps=["contacts"],
            group_name=GROUP,
            kinds={"postgres"},
            description="Named lists and their members.",
        ),
    ],
)
def uploads(context: dg.AssetExecutionContext, config: UploadConfig, postgres: PostgresResource):
    db, now = postgres.db, utcnow()
    uploads_dir = db.settings.uploads
    if config.path:
        try:
            files = [read_file(inbox_file(uploads_dir / "inbox", config.path))]
        except ValueError as exc:
            raise dg.Failure(f"config path: {exc}") from None
        if not os.path.lexists(files[0].path):
            # A retried run whose first attempt moved the file on: nothing is left to do.
            context.log.info(f"{config.path} is no longer in the inbox; it was handled")
            files = []
    else:
        files = list(pending_files(uploads_dir))
    outcomes: list[InboxOutcome] = []
    for item in files:

        def progress(stage, done, total, where=item.where):
            if stage == "merging" or (total and done == total):
                context.log.info(f"{where}: {stage} {done:,} of {total or 0:,} rows")

        outcome = process_file(db.app, uploads_dir, item, now, progress)
        outcomes.append(outcome)
        if outcome.error:
            context.log.error(f"{item.where}: {outcome.error} (moved to {outcome.moved_to})")
        else:
            r = outcome.result
            context.log.info(f"{item.where}: {r.counts()}")

    done = [o for o in outcomes if o.result is not None]
    batch_rows = [
        [o.file.where, "failed", "", "", "", "", o.error]
        if o.result is None
        else [
            o.file.where,
            "already loaded" if o.result.already_loaded else "completed",
            o.result.total_rows,
            o.result.inserted,
            o.result.updated,
            o.result.rejected,
            "",
        ]
        for o in outcomes
    ]
    preview = "No new contacts."
    latest = next((o.result for o in reversed(done) if not o.result.already_loaded), None)
    with db.analytics.connect() as conn:
        if latest is not None:
            rows = conn.execute(_PREVIEW, {"batch_id": latest.batch_id}).all()
            preview = _table(list(_PREVIEW_COLUMNS), [list(r) for r in rows])
        totals = conn.execute(_CONTACT_TOTALS).one()
        lists = conn.execute(_LIST_SIZES).all()
    yield dg.MaterializeResult(
        asset_key="upload_batches",
        metadata={
            "files": len(outcomes),
            "failed_files": sum(1 for o in outcomes if o.error),
            "rows": sum(o.result.total_rows for o in done),
            "inserted": sum(o.result.inserted for o in done),
            "updated": sum(o.result.updated for o in done),
            "duplicates": sum(o.result.duplicates for o in done),
            "rejected": sum(o.result.rejected for o in done),
            "batches": dg.MetadataValue.md(
                _table(
                    ["file", "status", "rows", "new", "updated", "rejected", "error"], batch_rows
                )
                if batch_rows
                else "No files were waiting."
            ),
            "preview": dg.MetadataValue.md(preview),
        },
    )
    yield dg.MaterializeResult(
        asset_key="contacts",
        metadata={
            "dagster/row_count": totals.contacts,
            "role_addresses": totals.role_addresses,
            "suppressed": totals.suppressed,
        },
    )
    yield dg.MaterializeResult(
        asset_key="contact_lists",
        metadata={
            "lists": len(lists),
            "members": sum(r.members for r in lists),
            "sizes": dg.MetadataValue.md(
                _table(["tenant", "list", "members"], [list(r) for r in lists]) if lists else "-"
            ),
        },
    )
    failed = [o for o in outcomes if o.error]
    if failed:
        # After the reports above (the other files' work is committed and shown): a run whose
        # file could not be loaded reads FAILURE, not SUCCESS. No retry: the file has moved
        # to failed/, and a retry would find nothing and succeed.
        raise dg.Failure(
            description=f"{len(failed)} of {len(outcomes)} file(s) could not be loaded: "
            + "; ".join(f"{o.file.where}: {o.error}" for o in failed),
            metadata={"failed_files": [str(o.moved_to) for o in failed]},
            allow_retries=False,
        )


def _none_found(postgres: PostgresResource, count_sql: str, metric: str) -> dg.AssetCheckResult:
    """Passes when `count_sql` (run across all tenants, as the analytics role) counts 0."""
    with postgres.db.analytics.connect() as conn:
        found = conn.execute(sa.text(count_sql)).scalar_one()
    return dg.AssetCheckResult(passed=found == 0, metadata={metric: found})


@dg.asset_check(asset="contacts", description="No address appears twice in a tenant.")
def contacts_have_unique_addresses(postgres: PostgresResource) -> dg.AssetCheckResult:
    return _none_found(
        postgres,
        "select count(*) from (select 1 from app.contacts "
        "group by tenant_id, lower(email) having count(*) > 1) as d",
        "repeated_addresses",
    )


@dg.asset_check(asset="contact_lists", description="Every list member is a contact.")
def list_members_have_contacts(postgres: PostgresResource) -> dg.AssetCheckResult:
    return _none_found(
        postgres,
        "select count(*) from app.contact_list_members m left join app.contacts c "
        "on c.tenant_id = m.tenant_id and c.id = m.contact_id where c.id is null",
        "orphan_members",
    )


ingest_upload_job = dg.define_asset_job(
    "ingest_upload_job",
    # Sending and the marts in the same run: one run start from a file to the dashboards (the
    # marts as a refresh, labelled with today's partition). Its tags (and the pools `sends`,
    # `dbt`) keep it from overlapping another send run or dbt build.
    selection=dg.AssetSelection.assets(
        "upload_batches", "contacts", "contact_lists", "enrollments", "sent_emails"
    )
    | analytics.ANALYTICS,
    partitions_def=analytics.ANALYTICS_DAYS,
    description="Ingest one uploaded file, enroll its contacts in active campaigns, send what "
    "is due, and refresh the marts.",
    tags={**SENDS_TAGS, **analytics.DBT_TAGS},
)


@dg.sensor(
    job=ingest_upload_job,
    minimum_interval_seconds=3,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Starts ingest_upload_job for each file waiting in the uploads inbox.",
)
def upload_inbox_sensor(context: dg.SensorEvaluationContext, postgres: PostgresResource):
    """One run per waiting file, keyed by its path in the inbox, size and mtime: a second
    tick or a retry maps to the same key, which Dagster runs once, while the same file dropped
    again later (a new mtime) gets a run of its own, which finds its content loaded (the run
    hashes it) and moves it to `processed/`. The sensor only lists and requests: it reads no
    file's content and moves nothing; every file, broken instructions included, is moved by
    its run."""
    uploads_dir = postgres.db.settings.uploads
    now = utcnow()
    today = now.date()
    requests = []
    for item in pending_files(uploads_dir, now_timestamp=time.time()):
        try:
            stat = item.path.lstat()  # an entry that is a link is the link's own
        except FileNotFoundError:  # its run moved it on since the listing
            continue
        relative = str(item.path.relative_to(uploads_dir / "inbox"))
        requests.append(
            dg.RunRequest(
                run_key=f"upload:{relative}:{stat.st_size}:{stat.st_mtime_ns}",
                run_config=dg.RunConfig(ops={"uploads": UploadConfig(path=relative)}),
                tags={
                    "penguin/tenant": item.tenant,
                    "penguin/list": item.list_name,
                    **analytics.refresh_tags((today, today), now),
                },
            )
        )
    if not requests:
        return dg.SkipReason("no files are waiting in the uploads inbox")
    return requests


defs = dg.Definitions(
    assets=[uploads],
    asset_checks=[contacts_have_unique_addresses, list_members_have_contacts],
    jobs=[ingest_upload_job],
    sensors=[upload_inbox_sensor],
)
