"""Engagement: the sender accounts' inbound mail, read when it arrives.

The `mailbox_sensor` lists the local sink's Maildir (names only: it reads no message) and asks
for a `poll_mail_job` run when a file newer than its cursor has arrived, and at most once a
minute when sender accounts have IMAP mailboxes; the run applies every inbound message from the
cursor's second on (`engine.mailboxes.maildir`) and whatever the IMAP mailboxes received since
their own cursors (`engine.mailboxes.imap`, UIDVALIDITY and last UID in the database), each
once, whatever ran before. A tick that sees nothing new asks for nothing, and a repeated tick
asks for the same run key.
"""

# No `from __future__ import annotations`: Dagster reads these annotations at runtime.
import json
import time

import dagster as dg

from engine.mailboxes.imap import has_imap_mailboxes, poll_imap
from engine.mailboxes.maildir import maildir_names, poll_maildir
from orchestration.resources import PostgresResource

#: How often the sensor has the IMAP mailboxes read (it cannot see new mail there without
#: logging in; the run does, and each account resumes at its cursor).
IMAP_INTERVAL_SECONDS = 60


class MailPollConfig(dg.Config):
    #: The arrival second (Unix time) the Maildir poll starts at; 0 reads the whole mailbox.
    since: int = 0
    #: Whether to read the IMAP mailboxes too (the sensor asks at most once a minute).
    imap: bool = True


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
    if config.imap:
        poll_imap(db.app, report=report)  # each account resumes at its own cursor (database)
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
    seen = {"since": 0, "names": [], "imap_at": 0.0}
    seen |= json.loads(context.cursor) if context.cursor else {}
    files = maildir_names(postgres.db.settings.maildir, seen["since"])
    # New: a later second, or a name of the cursor's second not seen yet (names within a
    # second do not sort by arrival).
    fresh = [(second, name) for second, name in files if name not in set(seen["names"])]
    now = time.time()
    imap_due = now - seen["imap_at"] >= IMAP_INTERVAL_SECONDS and has_imap_mailboxes(
        postgres.db.app
    )
    if not fresh and not imap_due:
        return dg.SkipReason("no new mail in the sink's Maildir; IMAP mailboxes read lately")
    latest = max((second for second, _ in files), default=seen["since"])
    names = sorted(name for second, name in files if second == latest)
    context.update_cursor(
        json.dumps(
            {"since": latest, "names": names, "imap_at": now if imap_due else seen["imap_at"]}
        )
    )
    key = f"mail:{fresh[-1][1]}" if fresh else f"mail:imap:{int(now)}"
    config = MailPollConfig(since=seen["since"], imap=imap_due)
    return dg.RunRequest(run_key=key, run_config=dg.RunConfig(ops={"inbound_mail": config}))


defs = dg.Definitions(assets=[inbound_mail], jobs=[poll_mail_job], sensors=[mailbox_sensor])
