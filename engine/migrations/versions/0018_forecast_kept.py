"""A kept forecast is marked, so the freshness sensor can finish what a run left for later.

An analytics run keeps a campaign's forecast made less than `PENGUIN_FORECAST_INTERVAL` ago
instead of simulating it again (`engine.forecasts`): while a campaign sends, the freshness
sensor starts a run as often as every 30 seconds, and simulating a large campaign takes
seconds. The sends such a run saw are then not in the forecast yet, and if they were the last
changes, no later run would come to put them there. `kept_at` records the run that kept it;
the sensor asks for one more run once such a forecast is `PENGUIN_FORECAST_INTERVAL` old (it
simulates again, and the new row has no `kept_at`).

The application role may set that column and no other (its forecasts are otherwise replaced
whole, by delete and insert).

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

UPGRADE = """
alter table app.send_forecasts add column kept_at timestamptz;
comment on column app.send_forecasts.kept_at is
    'The last analytics run that kept this forecast instead of simulating it again '
    '(migration 0018): the freshness sensor starts another once the forecast is older than '
    'PENGUIN_FORECAST_INTERVAL.';
grant update (kept_at) on app.send_forecasts to penguin_app;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(
        """
        revoke update (kept_at) on app.send_forecasts from penguin_app;
        alter table app.send_forecasts drop column kept_at;
        """
    )
