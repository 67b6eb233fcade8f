"""Changes in commit order: `change_xid`, the transaction that last wrote a row.

The incremental marts and the freshness sensor found what changed since their last look by the
writers' timestamps (`updated_at`, `recorded_at`) and a lookback. A writer's clock is not
commit order: `penguin send --now <tomorrow>` for one tenant moved the watermark a day ahead and
another tenant's real sends never reached the marts; `penguin generate` writes rows timed as if
they happened, days back, and most of them were skipped; a host whose clock is behind does the
same. Only a full refresh brought them back.

Every table an incremental model or the sensor watches gets `change_xid xid8`: the id of the
transaction that inserted or last updated the row, which the database assigns, whatever the
writer's clock or values say:

* inserts take the column default `pg_current_xact_id()` (free: no trigger runs);
* a trigger (`app.stamp_change_xid`) sets it on every update, and on an insert that named
  another value (a writer cannot choose it). The trigger fires `ALWAYS`, also under
  `session_replication_role = replica`, which the generator uses to skip the per-row foreign
  key checks; its `WHEN` keeps it from running at all for a plain insert.
* `xid8` (64 bits, epoch included) never wraps around, unlike `xid`.

A reader records `pg_snapshot_xmin(pg_current_snapshot())` of the statement that read the
tables: every transaction below it had committed (or aborted) and was seen. The next read takes
the rows whose `change_xid` is at least that: every transaction that had not committed yet,
whatever time its rows carry (dbt_project/macros/change_order.sql, the freshness sensor in
orchestration/analytics.py).

Rows written before this revision keep NULL, "old": the first build after it rebuilds the marts
whole (they have no recorded snapshot yet). No table is rewritten: the column is added without
a default (existing rows read NULL) and the default is set afterwards; the indexes, partial on
`change_xid is not null`, hold only rows written from now on. The analytics role already reads
every column of these tables (0001, 0016, 0017); nobody gains a privilege.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-08
"""

from __future__ import annotations

from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

SEARCH_PATH = "pg_catalog, app"

#: The tables whose changes the incremental marts or the freshness sensor look for, and
#: whether a build or a tick looks them up by `change_xid` (the large ones: an index; the
#: campaigns and sender accounts are few).
TABLES = {
    "sent_emails": True,
    "email_events": True,
    "contacts": True,
    "step_transitions": True,
    "campaigns": False,
    "sender_accounts": False,
}

FUNCTION = f"""
create function app.stamp_change_xid() returns trigger
language plpgsql
set search_path = {SEARCH_PATH}, pg_temp
as $$
begin
    new.change_xid := pg_current_xact_id();
    return new;
end
$$;
revoke execute on function app.stamp_change_xid() from public;
"""

TABLE = """
alter table app.{table} add column change_xid xid8;
alter table app.{table} alter column change_xid set default pg_current_xact_id();
comment on column app.{table}.change_xid is
    'The transaction that inserted or last updated this row, set by the database (migration '
    '0020); NULL for rows written before it. The incremental marts and the freshness sensor '
    'find changes by it, in commit order, whatever time the writer put on the row.';
create trigger {table}_change_xid before insert or update on app.{table}
    for each row when (new.change_xid is distinct from pg_current_xact_id())
    execute function app.stamp_change_xid();
alter table app.{table} enable always trigger {table}_change_xid;
"""

INDEX = """
create index {table}_change_xid_idx on app.{table} (change_xid) where change_xid is not null;
"""


def upgrade() -> None:
    op.execute(f"set local search_path = {SEARCH_PATH}")
    op.execute(FUNCTION)
    for table, indexed in TABLES.items():
        op.execute(TABLE.format(table=table))
        if indexed:
            op.execute(INDEX.format(table=table))


def downgrade() -> None:
    for table in TABLES:
        op.execute(f"drop trigger {table}_change_xid on app.{table}")
        op.execute(f"alter table app.{table} drop column change_xid")
    op.execute("drop function app.stamp_change_xid()")
