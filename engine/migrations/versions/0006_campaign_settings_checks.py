"""Campaign settings the scheduling rules can always use.

The engine builds each claimed campaign's schedule (`engine.sequence.rules.Window` and
`Schedule`) from these rows; a window that crosses midnight, an empty or out-of-range day list,
or an end before the start would fail that for every campaign of the tenant in the same batch.
Campaign files refuse them already; the database now refuses them from any writer, so one
campaign's settings can never stop another's sends.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

SEARCH_PATH = "pg_catalog, app"

UPGRADE = """
alter table app.campaign_settings
    -- An end of 00:00 is the end of the day (24:00), as in engine.sequence.rules.
    add constraint campaign_settings_window_check
        check (send_window_end = '00:00' or send_window_start < send_window_end),
    add constraint campaign_settings_days_check
        check (cardinality(send_days) > 0 and send_days <@ '{1,2,3,4,5,6,7}'::smallint[]);
alter table app.campaigns
    add constraint campaigns_schedule_check
        check (start_at is null or end_at is null or end_at > start_at);
"""

DOWNGRADE = """
alter table app.campaigns drop constraint campaigns_schedule_check;
alter table app.campaign_settings
    drop constraint campaign_settings_days_check,
    drop constraint campaign_settings_window_check;
"""


def upgrade() -> None:
    op.execute(f"set local search_path = {SEARCH_PATH}")
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(f"set local search_path = {SEARCH_PATH}")
    op.execute(DOWNGRADE)
