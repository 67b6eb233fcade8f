"""The marts' builds: the analytics role's memory and costs, and the indexes they search by.

dbt's builds aggregate and join millions of messages and events: with PostgreSQL's default
`work_mem` (4MB) every one of those sorts and hash tables spilled to temporary files. 128MB per
sort or hash, for the analytics role alone (dbt, the freshness sensor): a build runs a few at a
time, one per dbt thread. Its `random_page_cost` is 1.1 (below).

`email_events.recorded_at` had a BRIN index (revision 0013), which prunes only where the table's
physical order follows the column. Events are never updated, so a B-tree costs them no HOT
update, and it finds "recorded since" in any physical order (an import of old events, rows
written side by side by several transactions). `sent_emails.updated_at` keeps its BRIN: every
status change updates it, and a B-tree would make each of those a non-HOT update.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("alter role penguin_analytics set work_mem = '128MB'")
    op.execute("create index email_events_recorded_at_idx on app.email_events (recorded_at)")
    op.execute("drop index app.email_events_recorded_at_brin")
    # A block range is summarized (its minimum and maximum recorded) by a vacuum; until then it
    # matches every search. Summarize each as soon as it fills, not at the next vacuum.
    op.execute("alter index app.sent_emails_updated_at_brin set (autosummarize = on)")
    # The marts' working set is in memory: a page read at random costs little more than one
    # read in order, and the default (4) made the planner scan a million messages to find a
    # few thousand by their key.
    op.execute("alter role penguin_analytics set random_page_cost = 1.1")


def downgrade() -> None:
    op.execute("alter role penguin_analytics reset random_page_cost")
    op.execute("alter index app.sent_emails_updated_at_brin reset (autosummarize)")
    op.execute(
        "create index email_events_recorded_at_brin on app.email_events using brin (recorded_at)"
    )
    op.execute("drop index app.email_events_recorded_at_idx")
    op.execute("alter role penguin_analytics reset work_mem")
