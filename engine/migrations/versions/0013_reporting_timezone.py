"""Tenants report in a time zone of their own; the marts find what changed by index.

`tenants.reporting_timezone` (an IANA name, default UTC) decides which day a send or an event
counts on in the marts: a message sent at 23:30 UTC belongs to the next day in Europe/Amsterdam.
A name PostgreSQL does not know is refused when it is written (the check converts a time with
it), never when a dbt build meets it.

The incremental marts read the messages updated and the events recorded since their last build:
BRIN indexes on `sent_emails.updated_at` and `email_events.recorded_at` find them without a
scan. BRIN, because on PostgreSQL 16 a summarizing index keeps the engine's status updates HOT
(a B-tree on a column every update changes would not), and both columns grow with the table.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

SEARCH_PATH = "pg_catalog, app"

UPGRADE = """
create function app.is_time_zone(name text) returns boolean
language plpgsql immutable strict
set search_path = pg_catalog, pg_temp
as $$
begin
    perform timestamptz '2000-01-01 00:00+00' at time zone name;
    return true;
exception when invalid_parameter_value then
    return false;
end
$$;
revoke execute on function app.is_time_zone(text) from public;

alter table app.tenants
    add column reporting_timezone text not null default 'UTC'
        constraint tenants_reporting_timezone_known check (app.is_time_zone(reporting_timezone));

create index sent_emails_updated_at_brin on app.sent_emails using brin (updated_at);
create index email_events_recorded_at_brin on app.email_events using brin (recorded_at);
"""

DOWNGRADE = """
drop index app.email_events_recorded_at_brin;
drop index app.sent_emails_updated_at_brin;
alter table app.tenants drop column reporting_timezone;
drop function app.is_time_zone(text);
"""


def upgrade() -> None:
    op.execute(f"set local search_path = {SEARCH_PATH}")
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(f"set local search_path = {SEARCH_PATH}")
    op.execute(DOWNGRADE)
