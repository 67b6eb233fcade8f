"""What a forecast saw of its campaign's definition, and whether a run kept it.

An analytics run keeps a campaign's forecast made less than `PENGUIN_FORECAST_INTERVAL` ago
instead of simulating it again (`engine.forecasts`): while a campaign sends, the freshness
sensor starts a run as often as every 30 seconds, and simulating a large campaign takes
seconds. Two columns make that safe:

* `inputs_fingerprint`: an MD5 of the `updated_at` of what defines the campaign's sending (the
  campaign, its settings, its list, each of its sender accounts) when the forecast was made. A
  run keeps a forecast only while that is unchanged: a pause, an edit, an upload to the list
  or a sender paused makes a new one at the next run, whatever the clocks of the hosts that
  wrote them (any stamp that changes changes it, earlier or later; nothing is compared with
  the forecast's own time).
* `kept_at`: the last run that kept it. The sends such a run saw are not in the forecast yet,
  and if they were the last changes no later run would come to put them there: the sensor
  asks for one more run once such a forecast is `PENGUIN_FORECAST_INTERVAL` old (it simulates
  again, and the new row has no `kept_at`).

The application role writes `inputs_fingerprint` with the rest of a forecast and may update
`kept_at` and nothing else (its forecasts are otherwise replaced whole).

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
alter table app.send_forecasts add column inputs_fingerprint text,
                               add column kept_at timestamptz;
comment on column app.send_forecasts.inputs_fingerprint is
    'An MD5 of the updated_at of the campaign, its settings, its list and each of its sender '
    'accounts when the forecast was made (migration 0018).';
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
        alter table app.send_forecasts drop column kept_at, drop column inputs_fingerprint;
        """
    )
