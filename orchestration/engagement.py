"""Engagement: the sender accounts' inbound mail, read when it arrives.

The `mailbox_sensor` lists the local sink's Maildir (names only: it reads no message) and asks
for a `poll_mail_job` run when a file newer than its cursor has arrived, and at most once a
minute when sender accounts have IMAP mailboxes; the run applies every inbound message from where
the last complete poll got to (an arrival second kept under PENGUIN_HOME, moved on when a poll
completes, so a failed run loses nothing) (`engine.mailboxes.maildir`) and whatever the IMAP
mailboxes received since
their own cursors (`engine.mailboxes.imap`, UIDVALIDITY and last UID in the database), each
once, whatever ran before. A tick that sees nothing new asks for nothing, and a repeated tick
asks for the same run key.

Providers' event exports dropped in the events inbox (`PENGUIN_HOME/events/inbox/<tenant>/
<provider>/<file>`) are imported by `import_events_job`, one run per file, which
`event_inbox_sensor` asks for keyed by the file's place, size and mtime (a file dropped again
gets a run of its own, which finds its content imported); the run imports it through
`engine.provider_events` and moves it to `processed/` or `failed/`.
"""

# No `from __future__ import annotations`: Dagster reads these annotations at runtime.
import json
import os
import time

import dagster as dg
import pydantic

from engine.inbox import inbox_file
from engine.mailboxes.imap import has_imap_mailboxes, poll_imap
from engine.mailboxes.maildir import maildir_names, poll_maildir, store_cursor, stored_cursor
from engine.provider_events import inbox as event_inbox
from orchestration.clock import utcnow
from orchestration.resources import PostgresResource

#: How often the sensor has the IMAP mailboxes read (it cannot see new mail there without
#: logging in; the run does, and each account resumes at its cursor).
IMAP_INTERVAL_SECONDS = 60


class MailPollConfig(dg.Config):
    #: The arrival second (Unix time) the Maildir poll starts at; 0 reads the whole mailbox;
    #: -1 (the sensor's) where the last complete poll got to, kept under PENGUIN_HOME: a run
    #: that failed or died moves it on not at all, so the next run reads what it left.
    since: int = -1
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
    since = stored_cursor(db.settings.maildir_cursor) if config.since < 0 else config.since
    trusted = db.settings.authserv_ids
    report = poll_maildir(db.app, db.settings.maildir, cursor=since, authserv_ids=trusted)
    if config.imap:  # each account resumes at its own cursor (database)
        poll_imap(db.app, report=report, authserv_ids=trusted)
    for error in report.errors[:20]:
        context.log.warning(error)
    # The poll completed: the next starts at its cursor, or at a message that failed for a
    # reason that may pass (one that failed for its own data is reported, and read again only
    # by a full `penguin mail poll`); a run that raised moves the cursor on not at all.
    store_cursor(db.settings.maildir_cursor, max(report.resume_at, since))
    return dg.MaterializeResult(
        metadata={
            "read": report.read,
            "inbound": report.inbound,
            "applied": dg.MetadataValue.json(dict(report.applied)),
            "already_applied": report.already,
            "unmatched": report.unmatched,
            "suppressed": report.suppressed,
            "errors": len(report.errors),
            "since": since,
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
    config = MailPollConfig(imap=imap_due)  # from where the last complete poll got to
    return dg.RunRequest(run_key=key, run_config=dg.RunConfig(ops={"inbound_mail": config}))


class EventFileConfig(dg.Config):
    path: str = pydantic.Field(
        default="",
        description="One file in the events inbox (<tenant>/<provider>/<file>); empty imports "
        "every file waiting there.",
    )


@dg.asset(
    group_name="engagement",
    kinds={"json", "postgres"},
    description=(
        "Email service providers' event exports (SES, SendGrid, Mailgun, Postmark) imported: "
        "one event_imports batch per file, its events on the messages they name, their "
        "suppressions, and its rejected records in event_import_rejects."
    ),
)
def provider_events(
    context: dg.AssetExecutionContext, config: EventFileConfig, postgres: PostgresResource
) -> dg.MaterializeResult:
    db, now = postgres.db, utcnow()
    root = db.settings.event_files
    if config.path:
        try:
            files = [event_inbox.read_file(inbox_file(root / "inbox", config.path))]
        except ValueError as exc:
            raise dg.Failure(f"config path: {exc}") from None
        if not os.path.lexists(files[0].path):  # a retried run whose first attempt moved it on
            context.log.info(f"{config.path} is no longer in the events inbox; it was handled")
            files = []
    else:
        files = list(event_inbox.pending_files(root))
    rows, failed = [], 0
    totals = {"records": 0, "imported": 0, "duplicates": 0, "rejected": 0}
    for item in files:
        outcome = event_inbox.process_file(db.app, root, item, now)
        if outcome.error:
            context.log.error(f"{item.where}: {outcome.error} (moved to {outcome.moved_to})")
            error = outcome.error.replace("|", "\\|")
            rows.append(f"| {item.where} | failed | | | | {error} |")
            failed += 1
            continue
        r = outcome.result
        context.log.info(f"{item.where}: {r.counts()} {r.event_counts}")
        status = "already imported" if r.already_imported else "completed"
        rows.append(f"| {item.where} | {status} | {r.total} | {r.imported} | {r.rejected} | |")
        if not r.already_imported:
            totals["records"] += r.total
            totals["imported"] += r.imported
            totals["duplicates"] += r.duplicates
            totals["rejected"] += r.rejected
    table = "| file | status | records | imported | rejected | error |\n|---|---|---|---|---|---|"
    return dg.MaterializeResult(
        metadata={
            "files": len(files),
            "failed_files": failed,
            **totals,
            "imports": dg.MetadataValue.md("\n".join([table, *rows]) if rows else "-"),
        }
    )


import_events_job = dg.define_asset_job(
    "import_events_job",
    selection=dg.AssetSelection.assets(provider_events),
    description="Import one provider events file from the events inbox.",
)


@dg.sensor(
    job=import_events_job,
    minimum_interval_seconds=5,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Starts import_events_job for each file waiting in the events inbox.",
)
def event_inbox_sensor(context: dg.SensorEvaluationContext, postgres: PostgresResource):
    root = postgres.db.settings.event_files
    requests = []
    for item in event_inbox.pending_files(root, now_timestamp=time.time()):
        try:
            stat = item.path.lstat()  # an entry that is a link is the link's own
        except FileNotFoundError:  # its run moved it on since the listing
            continue
        relative = str(item.path.relative_to(root / "inbox"))
        requests.append(
            dg.RunRequest(
                run_key=f"events:{relative}:{stat.st_size}:{stat.st_mtime_ns}",
                run_config=dg.RunConfig(ops={"provider_events": EventFileConfig(path=relative)}),
                tags={"penguin/tenant": item.tenant, "penguin/provider": item.provider},
            )
        )
    if not requests:
        return dg.SkipReason("no files are waiting in the events inbox")
    return requests


defs = dg.Definitions(
    assets=[inbound_mail, provider_events],
    jobs=[poll_mail_job, import_events_job],
    sensors=[mailbox_sensor, event_inbox_sensor],
)
