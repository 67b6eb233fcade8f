"""Sending: enrollments, and the send job that a sensor starts whenever sends fall due.

The marts follow on their own: `analytics.analytics_freshness_sensor` sees the sends a run
wrote and refreshes the days they belong to. The sending engine runs
in the pool `sends` (limit 1 in the instance `penguin up` writes): whichever job includes
`sent_emails`, one send run at a time.
"""

# No `from __future__ import annotations`: Dagster reads these annotations at runtime.
import dagster as dg

from engine.db import tenant_transaction
from engine.enrollment import enroll_active_campaigns
from engine.sending import store
from engine.sending.scheduler import Config, SendReport, send_due
from engine.sequence import steps
from engine.tenants import all_tenants
from engine.tracking.links import tracking_for
from orchestration.clock import utcnow
from orchestration.resources import PostgresResource, SmtpResource


@dg.asset(
    deps=["contacts"],
    group_name="sending",
    kinds={"postgres"},
    description="Campaign enrollments: each member of an active campaign's list, once.",
)
def enrollments(
    context: dg.AssetExecutionContext, postgres: PostgresResource
) -> dg.MaterializeResult:
    db, now = postgres.db, utcnow()
    per_campaign: dict[str, int] = {}
    for tenant_id, tenant in all_tenants(db.app):
        with tenant_transaction(db.app, tenant_id) as conn:
            for campaign, count in enroll_active_campaigns(conn, now).items():
                per_campaign[f"{tenant}/{campaign}"] = count
    for campaign, count in per_campaign.items():
        context.log.info(f"{campaign}: {count} new enrollments")
    return dg.MaterializeResult(
        metadata={
            "new_enrollments": sum(per_campaign.values()),
            "per_campaign": dg.MetadataValue.json(per_campaign),
        }
    )


#: The pool of every run of the sending engine (see the module docstring).
SENDS_POOL = "sends"
#: Run tags of every job that sends: one such run at a time in the run queue, as with
#: `analytics.DBT_TAGS`.
SENDS_TAGS = {"penguin/sends": "send"}


@dg.asset(
    deps=[enrollments],
    group_name="sending",
    kinds={"smtp", "postgres"},
    pool=SENDS_POOL,
    description=(
        "Messages sent over SMTP. Materializing runs one engine pass: enroll new list "
        "members, move wait, condition and action steps on, send the due emails under their "
        "throttles (claim, render, send, record, advance)."
    ),
)
def sent_emails(
    context: dg.AssetExecutionContext, postgres: PostgresResource, smtp: SmtpResource
) -> dg.MaterializeResult:
    report = send_due(
        postgres.db.app,
        smtp.sink(),
        utcnow(),
        config=Config(tracking=tracking_for(postgres.settings())),
        clock=utcnow,
        on_batch=lambda r: context.log.info(f"progress: {r.as_dict()}"),
    )
    for reason, count in report.servers_down.items():
        context.log.warning(f"{count} message(s) deferred: {reason}")
    for error in report.errors[:20]:
        context.log.warning(error)
    return dg.MaterializeResult(metadata=pass_metadata(report))


def pass_metadata(report: SendReport) -> dict[str, object]:
    """The counts of a pass as run metadata: totals as numbers, reasons as JSON."""
    return {
        name: dg.MetadataValue.json(value) if isinstance(value, dict) else value
        for name, value in report.as_dict().items()
    }


send_due_job = dg.define_asset_job(
    "send_due_job",
    selection=dg.AssetSelection.assets(sent_emails),
    description="Send every message that is due now.",
    tags=SENDS_TAGS,
)

_FINISHED = [
    dg.DagsterRunStatus.SUCCESS,
    dg.DagsterRunStatus.FAILURE,
    dg.DagsterRunStatus.CANCELED,
]


@dg.sensor(
    job=send_due_job,
    minimum_interval_seconds=5,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Starts send_due_job whenever enrollments are due or new list members wait.",
)
def due_sends_sensor(context: dg.SensorEvaluationContext, postgres: PostgresResource):
    db, now = postgres.db, utcnow()
    due, oldest = 0, None
    for tenant_id, _ in all_tenants(db.app):
        with tenant_transaction(db.app, tenant_id) as conn:
            # Due enrollments, and what the pass starts with that none shows yet: campaigns
            # whose start has come, new list members to enroll (`penguin upload`, actions).
            summaries = [store.due_summary(conn, now), steps.waiting_to_start(conn, now)]
        for count, first in summaries:
            due += count
            if first is not None and (oldest is None or first < oldest):
                oldest = first
    if not due:
        return dg.SkipReason("nothing is due")
    # A second tick that sees the same due set (the run it asked for is queued or has not
    # claimed yet) maps to the same run_key, which Dagster runs once. The last *finished*
    # send run is part of the key, so the same set is requested again once that run has
    # ended (a failed run's leases fall due again). A run that does start beside another
    # waits for the `sends` pool, and claims are leased: an extra run sends nothing twice.
    finished = context.instance.get_run_records(
        dg.RunsFilter(job_name=send_due_job.name, statuses=_FINISHED), limit=1
    )
    last = finished[0].dagster_run.run_id if finished else "none"
    run_key = f"due:{oldest.isoformat()}:{due}:after:{last}"
    context.update_cursor(run_key)
    return dg.RunRequest(run_key=run_key, tags={"penguin/due": str(due)})


defs = dg.Definitions(
    assets=[enrollments, sent_emails],
    jobs=[send_due_job],
    sensors=[due_sends_sensor],
)
