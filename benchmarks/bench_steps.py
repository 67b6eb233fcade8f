"""steps: 1,000,000 due enrollments on wait and condition steps advanced by ONE call of
`engine.sequence.steps.advance`. Target here: <= 10 s.

Setup, before the clock starts: an embedded PostgreSQL (pgserver) in a temporary PENGUIN_HOME,
migrated; one tenant with 1,000,000 contacts on a list (bulk-loaded with INSERT ... SELECT
generate_series, lead scores 0..99, a tenth of them with an `open` event of the first email)
and an active campaign:

    intro (email) -> pause (wait 3d) -> follow-up (email)
    hot? {lead_score: {gte: 50}}  then: hot-email  else: cold-email
    warm? {opened: intro}         then: warm-email else: cold-email

with 500,000 enrollments due on `pause`, 250,000 on `hot?` and 250,000 on `warm?`, all due, no
lease. One `advance` moves each of them once, onto an email step (which `advance` leaves to the
sender): 1,000,000 moves, and a second round that finds nothing left.

Baseline, measured in the same run on the same rows (then vacuumed away): one statement that
moves every due enrollment one microsecond later (`update ... set next_run_at = next_run_at +
interval '1 microsecond'`): a new version of each row with an entry in every index, as any
move onto another step writes (an update that changed no indexed column could stay on its page
and skip the indexes), the least a set-based pass that moves each row could cost; and
`count(*)` of them, the cost of finding them.

Also printed, for the other statements a pass runs over the same million enrollments (none of
them finds work here): `enroll` (no new list member), `exit_stopped` (1,000 suppressed
contacts, 10 company-scope replies) and `complete_campaigns`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402

from engine import migrate  # noqa: E402
from engine.config import Settings  # noqa: E402
from engine.db import Database, tenant_transaction  # noqa: E402
from engine.embedded import start_embedded_postgres  # noqa: E402
from engine.tenants import create_tenant  # noqa: E402

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)

#: Steps of the campaign: (key, type, condition, then, else, next, wait).
STEPS = [
    ("intro", "email", None, None, None, "pause", None),
    ("pause", "wait", None, None, None, "follow-up", "3 days"),
    ("follow-up", "email", None, None, None, None, None),
    ("hot?", "condition", '{"lead_score": {"gte": 50}}', "hot-email", "cold-email", None, None),
    ("warm?", "condition", '{"opened": "intro"}', "warm-email", "cold-email", None, None),
    ("hot-email", "email", None, None, None, None, None),
    ("warm-email", "email", None, None, None, None, None),
    ("cold-email", "email", None, None, None, None, None),
]

# Run as the owner (bypasses row-level security): the fixture names its tenant explicitly.
LOAD = """
insert into app.contact_lists (id, tenant_id, name) values (:list_id, :tenant_id, 'bench');
insert into app.campaigns (id, tenant_id, name, list_id, status, launched_at)
values (:campaign_id, :tenant_id, 'bench', :list_id, 'active', :now);
insert into app.campaign_settings (campaign_id, tenant_id, stop_on_reply)
values (:campaign_id, :tenant_id, 'company');
insert into app.contacts (tenant_id, email, first_name, lead_score, created_at, updated_at)
select :tenant_id, 'p' || i || '@d' || (i % 5000) || '.example', 'P' || i, i % 100, :now, :now
from generate_series(0, :rows - 1) i;
insert into app.contact_list_members (tenant_id, list_id, contact_id)
select :tenant_id, :list_id, id from app.contacts;
"""

STEP = sa.text(
    """
    insert into app.campaign_steps
        (tenant_id, campaign_id, step_order, key, step_type, subject, body_text, wait_duration,
         condition_rules)
    values (:tenant_id, :campaign_id, :step_order, :key, :step_type,
            case when :step_type = 'email' then 'Hi' end,
            case when :step_type = 'email' then 'Hello' end,
            cast(:wait as interval), cast(:condition as jsonb))
    returning id
    """
)
LINK = sa.text(
    """
    update app.campaign_steps
    set next_step_id = :next, true_next_step_id = :true_next, false_next_step_id = :false_next
    where id = :id
    """
)
# Contacts in id order: the first half wait, the next quarter on hot?, the last on warm?.
ENROLL = sa.text(
    """
    insert into app.campaign_contacts
        (tenant_id, campaign_id, contact_id, status, current_step_id, next_run_at,
         steps_completed, enrolled_at, started_at, updated_at)
    select :tenant_id, :campaign_id, id, 'active',
           case when n <= :rows / 2 then cast(:pause as uuid)
                when n <= :rows * 3 / 4 then cast(:hot as uuid)
                else cast(:warm as uuid) end,
           :now - interval '1 minute', 1, :now - interval '3 days', :now - interval '3 days',
           :now - interval '1 minute'
    from (select id, row_number() over (order by id) as n from app.contacts) c
    """
)
EVENTS = sa.text(
    """
    insert into app.email_events
        (tenant_id, event_type, contact_id, campaign_id, step_id, occurred_at, dedup_key)
    select :tenant_id, 'open', id, :campaign_id, :intro, :now - interval '2 days', 'open-' || id
    from app.contacts where lead_score % 10 = 3
    """
)
SUPPRESS = sa.text(
    """
    insert into app.suppressions (tenant_id, email, reason)
    select :tenant_id, 'gone' || i || '@nowhere.example', 'manual' from generate_series(1, 1000) i
    """
)
REPLIES = sa.text(
    """
    insert into app.email_events
        (tenant_id, event_type, contact_id, campaign_id, occurred_at, dedup_key)
    select :tenant_id, 'reply', id, :other_campaign, :now, 'reply-' || id
    from app.contacts order by id limit 10
    """
)
OTHER_CAMPAIGN = sa.text(
    """
    insert into app.campaigns (id, tenant_id, name, list_id, status)
    values (:other_campaign, :tenant_id, 'replied', :list_id, 'paused');
    """
)
OTHER_SETTINGS = sa.text(
    """
    insert into app.campaign_settings (campaign_id, tenant_id, stop_on_reply)
    values (:other_campaign, :tenant_id, 'company')
    """
)

DUE = "status in ('enrolled', 'active') and next_run_at <= :now"
LEFT_BEHIND = sa.text(
    """
    select count(*) from app.campaign_contacts cc
    join app.campaign_steps s on s.id = cc.current_step_id
    where cc.status in ('enrolled', 'active') and cc.next_run_at <= :now
      and s.step_type <> 'email'
    """
)
BASELINE_COUNT = sa.text(f"select count(*) from app.campaign_contacts where {DUE}")
BASELINE_WRITE = sa.text(
    "update app.campaign_contacts set next_run_at = next_run_at + interval '1 microsecond' "
    f"where {DUE}"
)


def log(message: str) -> None:
    print(f"# {message}", file=sys.stderr, flush=True)


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def vacuum(db: Database) -> None:
    with db.owner.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in (
            "campaign_contacts",
            "contacts",
            "contact_list_members",
            "email_events",
            "campaign_steps",
            "suppressions",
        ):
            conn.execute(sa.text(f"vacuum analyze app.{table}"))
        # Every measurement starts from the same state: nothing left to write back, neither in
        # PostgreSQL's buffers nor in the kernel's page cache (the load wrote gigabytes).
        conn.execute(sa.text("checkpoint"))
    os.sync()


def copy_of(settings: Settings, server: str, template: str | None, name: str) -> Database:
    """Database `name` on the embedded server: empty, or a copy of `template`; migrated (a
    copy needs its database-level grants again), checkpointed, written back to disk."""
    from engine.db import sqlalchemy_url

    url = sqlalchemy_url(server)
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        source = "" if template is None else f" template {template}"
        conn.execute(sa.text(f"create database {name}{source}"))
    admin.dispose()
    db = Database(settings, owner_url=url.set(database=name))
    if template is not None:
        migrate.upgrade(db)
        vacuum(db)
    return db


def load(db: Database, rows: int) -> tuple:
    import uuid

    tenant_id, _ = create_tenant(db.owner, "bench")
    ids = {
        "tenant_id": tenant_id,
        "list_id": uuid.uuid4(),
        "campaign_id": uuid.uuid4(),
        "other_campaign": uuid.uuid4(),
        "now": NOW,
        "rows": rows,
    }
    with db.owner.begin() as conn:
        for statement in LOAD.split(";\n"):
            if statement.strip():
                conn.execute(sa.text(statement), ids)
        steps = {}
        for order, (key, kind, condition, _, _, _, wait) in enumerate(STEPS, start=1):
            steps[key] = conn.execute(
                STEP,
                {
                    **ids,
                    "step_order": order,
                    "key": key,
                    "step_type": kind,
                    "wait": wait,
                    "condition": condition,
                },
            ).scalar_one()
        for key, _, _, then, otherwise, following, _ in STEPS:
            conn.execute(
                LINK,
                {
                    "id": steps[key],
                    "next": steps.get(following),
                    "true_next": steps.get(then),
                    "false_next": steps.get(otherwise),
                },
            )
        conn.execute(
            ENROLL, {**ids, "pause": steps["pause"], "hot": steps["hot?"], "warm": steps["warm?"]}
        )
        conn.execute(EVENTS, {**ids, "intro": steps["intro"]})
        conn.execute(SUPPRESS, ids)
        conn.execute(OTHER_CAMPAIGN, ids)
        conn.execute(OTHER_SETTINGS, ids)
        conn.execute(REPLIES, ids)
    return tenant_id, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--explain", action="store_true", help="print the plans (slower)")
    args = parser.parse_args()
    rows = args.rows
    if rows % 4:
        raise SystemExit("--rows must be a multiple of 4")

    from engine.sequence import steps as engine_steps

    with tempfile.TemporaryDirectory(prefix="bench-steps-") as tmp:
        settings = Settings(home=Path(tmp) / "home", database_url=None)
        server = start_embedded_postgres(settings)  # kept up while this process lives
        seed = copy_of(settings, server, None, "bench_seed")
        migrate.upgrade(seed)

        log(f"loading {rows:,} contacts and enrollments")
        seconds, (tenant_id, _) = timed(lambda: load(seed, rows))
        vacuum(seed)
        seed.dispose()
        log(f"loaded in {seconds:.1f}s")

        # The baseline and the pass each start from a copy of the loaded database, page for
        # page: neither finds the indexes the other one grew.
        db = copy_of(settings, server, "bench_seed", "bench_baseline")
        log("baseline: count the due enrollments, then write each once")
        with tenant_transaction(db.app, tenant_id) as conn:
            count_s, due = timed(lambda: conn.execute(BASELINE_COUNT, {"now": NOW}).scalar_one())
        assert due == rows, due
        with tenant_transaction(db.app, tenant_id) as conn:
            write_s, written = timed(lambda: conn.execute(BASELINE_WRITE, {"now": NOW}).rowcount)
        assert written == rows, written
        vacuum(db)
        log(f"baseline: count(*) {count_s:.2f}s, one-microsecond move {write_s:.2f}s")
        db.dispose()
        db = copy_of(settings, server, "bench_seed", "bench_pass")

        if args.explain:
            with tenant_transaction(db.app, tenant_id) as conn:
                plan = conn.execute(
                    sa.text("explain (analyze, buffers) " + str(BASELINE_WRITE)), {"now": NOW}
                )
                print("\n".join(plan.scalars()), file=sys.stderr)
                conn.rollback()
            _explain(db, tenant_id)

        log("advance: one call over every due enrollment")
        start = time.perf_counter()
        with tenant_transaction(db.app, tenant_id) as conn:
            moved = engine_steps.advance(conn, NOW)
        seconds = time.perf_counter() - start
        with tenant_transaction(db.app, tenant_id) as conn:
            left = conn.execute(LEFT_BEHIND, {"now": NOW}).scalar_one()
        if left:
            raise SystemExit(f"advance left {left:,} due enrollments on wait or condition steps")
        if moved.advanced != rows:
            raise SystemExit(f"advance moved {moved.advanced:,}, expected {rows:,}")
        log(f"advance: {seconds:.2f}s, {moved.advanced:,} moves in {moved.rounds} rounds")
        vacuum(db)

        with tenant_transaction(db.app, tenant_id) as conn:
            enroll_s, enrolled = timed(lambda: engine_steps.enroll(conn, NOW))
            exit_s, exited = timed(lambda: engine_steps.exit_stopped(conn, NOW))
            complete_s, _ = timed(lambda: engine_steps.complete_campaigns(conn, NOW))
        log(
            f"enroll {enroll_s:.2f}s ({enrolled}), exit_stopped {exit_s:.2f}s ({exited}), "
            f"complete_campaigns {complete_s:.2f}s"
        )
        print(
            f"BENCH steps seconds={seconds:.2f} baseline_seconds={write_s:.2f} "
            f"ratio={seconds / write_s:.2f} baseline_count_seconds={count_s:.2f} "
            f"enrollments={rows} moves={moved.advanced} rounds={moved.rounds} target_seconds=10 "
            f"enroll_seconds={enroll_s:.2f} exit_stopped_seconds={exit_s:.2f} "
            f"complete_seconds={complete_s:.2f}",
            flush=True,
        )


def _explain(db: Database, tenant_id) -> None:
    """EXPLAIN ANALYZE of each statement of one `advance` round, rolled back. Each statement
    runs under EXPLAIN first (which executes it), so the real run after it finds nothing left:
    the plans are the figures here, not the counts."""
    from engine.sequence import steps as engine_steps

    with tenant_transaction(db.app, tenant_id) as conn:
        execute = conn.execute

        def explained(statement, params=None):
            plan = execute(sa.text("explain (analyze, buffers) " + str(statement)), params or {})
            print("\n".join(plan.scalars()), "\n", file=sys.stderr)
            return execute(statement, params)

        conn.execute = explained  # type: ignore[method-assign]
        engine_steps.advance(conn, NOW)
        conn.rollback()


if __name__ == "__main__":
    main()
