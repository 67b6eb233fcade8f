"""Engagement events as the tracking server and the mailboxes write them.

* **Two more event types**: `auto_reply` (an out-of-office answer: recorded, never counted as
  a reply, and it stops no sequence) and `delivered` (a provider's delivery report).
* **Machine events** (`engine.tracking.machine`): `machine_reason` says why an open or click was
  a proxy's or scanner's, NULL for a person's; `is_machine` is derived from it, for the marts.
  The table stays append-only for `penguin_app` but for that one column: the rule "clicks on
  every link of a message within seconds" can only be known when the last of them arrives, and
  then flags the earlier ones too (a column grant: nothing else of an event can ever change).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

SEARCH_PATH = "pg_catalog, app"

UPGRADE = """
alter table app.email_events
    drop constraint email_events_event_type_check,
    add constraint email_events_event_type_check
        check (event_type in ('delivered', 'open', 'click', 'reply', 'auto_reply', 'bounce',
                              'unsubscribe', 'complaint')),
    add column machine_reason text,
    add column is_machine boolean generated always as (machine_reason is not null) stored;
grant update (machine_reason) on app.email_events to penguin_app;
"""

DOWNGRADE = """
revoke update (machine_reason) on app.email_events from penguin_app;
delete from app.email_events where event_type in ('delivered', 'auto_reply');
alter table app.email_events
    drop column is_machine,
    drop column machine_reason,
    drop constraint email_events_event_type_check,
    add constraint email_events_event_type_check
        check (event_type in ('open', 'click', 'reply', 'bounce', 'unsubscribe', 'complaint'));
"""


def upgrade() -> None:
    op.execute(f"set local search_path = {SEARCH_PATH}")
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(f"set local search_path = {SEARCH_PATH}")
    op.execute(DOWNGRADE)
