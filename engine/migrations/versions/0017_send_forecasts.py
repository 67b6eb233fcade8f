"""Send forecasts as data: each campaign's forecast, kept by the analytics runs for the marts.

A campaign's page showed its 14-day send forecast by running the engine's simulation
(`engine.sequence.forecast`) when the page opened, as `penguin_operator`: over a quarter of a
million enrollments that took one and a half seconds of SQL and seven of Python, on a page
whose every other query takes milliseconds. The forecast is now computed where the marts are:
every analytics run first stores each campaign's forecast (`engine.forecasts`, the Dagster
asset `send_forecasts`), and dbt builds the marts `campaign_forecasts` and
`campaign_forecast_daily` from these two tables, which the dashboards read like any mart.

* `app.send_forecasts`: one row per campaign, the time it was simulated from, its summary
  and notes, or why it could not be forecast (`error`);
* `app.send_forecast_days`: messages per campaign-local day and email step.

The application role writes both (the asset replaces a tenant's forecasts in one
transaction), within its tenant like every tenant table; the analytics role reads all.

With the forecast gone from the page, `penguin_operator` keeps only what pausing and resuming
read (the campaign and whether it has senders): the other reads 0015 granted it for the
forecast are revoked.

`app.step_transitions` gains `recorded_at` (the server's time of the insert), so the freshness
sensor can watch it as it watches messages and events: a move through a wait or a condition
alone, with no message, now reaches the marts at the next sensor tick.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

#: What 0015 granted penguin_operator for the forecast alone.
FORECAST_READS = (
    "campaign_settings",
    "campaign_steps",
    "campaign_contacts",
    "contacts",
    "contact_list_members",
    "sent_emails",
    "email_events",
    "suppressions",
)
SENDER_COLUMNS = "id, tenant_id, daily_limit, min_gap_seconds, is_active"

UPGRADE = """
create table app.send_forecasts (
    tenant_id     uuid not null references app.tenants (id) on delete cascade,
    campaign_id   uuid not null,
    -- The time the engine's passes were simulated from.
    forecast_at   timestamptz not null,
    -- The campaign's time zone: the days below are its local days.
    timezone      text not null,
    days          integer not null check (days > 0),
    -- The local day of the last message (within a year), NULL when nothing goes out.
    last_day      date,
    -- Messages after the forecast's last day, and enrollments still under way a year ahead.
    later         integer not null default 0 check (later >= 0),
    unfinished    integer not null default 0 check (unfinished >= 0),
    summary       text not null,
    notes         text[] not null default '{}',
    -- Why the campaign could not be forecast (no days then).
    error         text,
    primary key (tenant_id, campaign_id),
    foreign key (tenant_id, campaign_id) references app.campaigns (tenant_id, id)
        on delete cascade
);
comment on table app.send_forecasts is
    'Each campaign''s send forecast, as the last analytics run simulated it (migration 0017).';

create table app.send_forecast_days (
    tenant_id     uuid not null,
    campaign_id   uuid not null,
    day           date not null,
    step_key      text not null,
    messages      integer not null check (messages >= 0),
    primary key (tenant_id, campaign_id, day, step_key),
    foreign key (tenant_id, campaign_id) references app.send_forecasts (tenant_id, campaign_id)
        on delete cascade
);
comment on table app.send_forecast_days is
    'Messages a campaign is forecast to send per local day and email step (migration 0017).';

alter table app.send_forecasts enable row level security;
alter table app.send_forecasts force row level security;
alter table app.send_forecast_days enable row level security;
alter table app.send_forecast_days force row level security;
create policy tenant_isolation on app.send_forecasts
    using (tenant_id = (select app.current_tenant_id()))
    with check (tenant_id = (select app.current_tenant_id()));
create policy tenant_isolation on app.send_forecast_days
    using (tenant_id = (select app.current_tenant_id()))
    with check (tenant_id = (select app.current_tenant_id()));
create policy analytics_read_all on app.send_forecasts
    for select to penguin_analytics using (true);
create policy analytics_read_all on app.send_forecast_days
    for select to penguin_analytics using (true);
grant select, insert, delete on app.send_forecasts, app.send_forecast_days to penguin_app;
grant select on app.send_forecasts, app.send_forecast_days to penguin_analytics;

-- The server's time of each move, for the freshness sensor (the history is never updated, so
-- a B-tree costs no HOT update and finds the newest rows in any physical order).
alter table app.step_transitions add column recorded_at timestamptz not null default now();
create index step_transitions_recorded_at_idx on app.step_transitions (recorded_at);
"""


def upgrade() -> None:
    op.execute(UPGRADE)
    op.execute(
        f"revoke select on {', '.join(f'app.{t}' for t in FORECAST_READS)} from penguin_operator"
    )
    op.execute(f"revoke select ({SENDER_COLUMNS}) on app.sender_accounts from penguin_operator")


def downgrade() -> None:
    op.execute(f"grant select ({SENDER_COLUMNS}) on app.sender_accounts to penguin_operator")
    op.execute(
        f"grant select on {', '.join(f'app.{t}' for t in FORECAST_READS)} to penguin_operator"
    )
    op.execute(
        """
        drop index app.step_transitions_recorded_at_idx;
        alter table app.step_transitions drop column recorded_at;
        drop table app.send_forecast_days;
        drop table app.send_forecasts;
        """
    )
