"""Engagement: the sender accounts' inbound mail, read when it arrives.

The `mailbox_sensor` lists the local sink's Maildir (names only: it reads no message) and asks
for a `poll_mail_job` run when a file newer than its cursor has arrived; the run applies every
inbound message from the cursor's second on (`engine.mailboxes.maildir`), each once, whatever
ran before. The cursor is the newest file seen: a tick that sees nothing new asks for nothing,
and a repeated tick asks for the same run key.
"""

# No `from __future__ import annotations`: Dagster reads these annotations at runtime.
import json

import dagster as dg

from engine.mailboxes.maildir import newest_file, poll_maildir
from orchestration.resources import PostgresResource


class MailPollConfig(dg.Config):
    #: The arrival second (Unix time) the poll starts at; 0 reads the whole mailbox.
    since: int = 0


@dg.asset(
    group_name="engagement",
    kinds={"postgres"},
    description=(
        "Inbound mail of the sender accounts applied: replies, auto-replies, bounces, "
        "complaints and unsubscribe emails, as events on the messages they answer, and the "
        "suppressions they make."
    ),
)
def inbound_mail(
    context: dg.AssetExecutionContext, config: MailPollConfig, postgres: PostgresResource
) -> dg.MaterializeResult:
    db = postgres.db
    report = poll_maildir(db.app, db.settings.maildir, cursor=config.since)
    for error in report.errors[:20]:
        context.log.warning(error)
    return dg.MaterializeResult(
        metadata={
            "read": report.read,
            "inbound": report.inbound,
            "applied": dg.MetadataValue.json(dict(report.applied)),
            "already_applied": report.already,
            "unmatched": report.unmatched,
            "suppressed": report.suppressed,
            "errors": len(report.errors),
        }
    )


poll_mail_job = dg.define_asset_job(
    "poll_mail_job",
    selection=dg.AssetSelection.assets(inbound_mail),
    description="Apply the inbound mail that arrived since the given second.",
)


@dg.sensor(
    job=poll_mail_job,
    minimum_interval_seconds=10,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Starts poll_mail_job when new mail has arrived in the sink's Maildir.",
)
def mailbox_sensor(context: dg.SensorEvaluationContext, postgres: PostgresResource):
    seen = json.loads(context.cursor) if context.cursor else {"since": 0, "newest": ""}
    newest = newest_file(postgres.db.settings.maildir, seen["since"])
    if newest is None or newest[1] == seen["newest"]:
        return dg.SkipReason("no new mail")
    second, name = newest
    context.update_cursor(json.dumps({"since": second, "newest": name}))
    return dg.RunRequest(
        run_key=f"mail:{name}",
        run_config=dg.RunConfig(ops={"inbound_mail": MailPollConfig(since=seen["since"])}),
    )


defs = dg.Definitions(assets=[inbound_mail], jobs=[poll_mail_job], sensors=[mailbox_sensor])
