"""The operators' role: what the dashboards' operators' corner does, and nothing more.

The campaign page pauses and resumes a campaign and shows its send forecast, through the
engine's own functions (`engine.campaigns.pause_campaign` / `resume_campaign`,
`engine.sequence.forecast.forecast`). The dashboards' own role reads the marts only, and the
application role may write everything the engine writes; `penguin_operator` sits between:

* it reads what the forecast and the status change read (campaigns, their settings, steps,
  senders and enrollments, contacts and list members, messages, engagement, suppressions,
  the senders' limits, never their credentials);
* it changes one thing: a campaign's `status` (and `updated_at`), a column grant, and only as
  pausing and resuming do (a trigger refuses the rest: it cannot launch a draft, which skips
  the launch's checks, nor complete a campaign);
* like the application role it is neither owner nor `BYPASSRLS`: every tenant table's
  `tenant_isolation` policy confines it to the tenant its transaction bound
  (`app.bind_tenant`), so another tenant's campaign id finds nothing.

Its password comes from `PENGUIN_OPERATOR_PASSWORD`; only the dashboards process gets it.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

SEARCH_PATH = "pg_catalog, app"

#: Tables the forecast and the status change read, whole.
READS = (
    "campaigns",
    "campaign_settings",
    "campaign_steps",
    "campaign_senders",
    "campaign_contacts",
    "contacts",
    "contact_list_members",
    "sent_emails",
    "email_events",
    "suppressions",
)
#: The sender columns the forecast reads (not the SMTP settings).
SENDER_COLUMNS = "id, tenant_id, daily_limit, min_gap_seconds, is_active"


STATUS_RULE = f"""
create function app.operator_status_change() returns trigger
language plpgsql
set search_path = {SEARCH_PATH}, pg_temp
as $$
begin
    if new.status is distinct from old.status
       and not ((old.status in ('active', 'scheduled') and new.status = 'paused')
                or (old.status = 'paused' and new.status in ('active', 'scheduled'))) then
        raise exception 'penguin_operator only pauses and resumes campaigns: not % to %',
            old.status, new.status using errcode = 'insufficient_privilege';
    end if;
    return new;
end
$$;
create trigger campaigns_operator_status before update of status on app.campaigns
for each row when (current_user = 'penguin_operator')
execute function app.operator_status_change();
"""


def upgrade() -> None:
    op.execute(
        """
        do $$
        begin
          if not exists (select from pg_catalog.pg_roles where rolname = 'penguin_operator') then
            create role penguin_operator login nosuperuser nobypassrls nocreatedb nocreaterole;
          end if;
        end
        $$
        """
    )
    op.execute(f"alter role penguin_operator set search_path = {SEARCH_PATH}")
    op.execute("grant usage on schema app to penguin_operator")
    op.execute(f"grant select on {', '.join(f'app.{t}' for t in READS)} to penguin_operator")
    op.execute(f"grant select ({SENDER_COLUMNS}) on app.sender_accounts to penguin_operator")
    op.execute("grant update (status, updated_at) on app.campaigns to penguin_operator")
    op.execute("grant execute on function app.bind_tenant(uuid) to penguin_operator")
    op.execute(STATUS_RULE)


def downgrade() -> None:
    op.execute("drop trigger campaigns_operator_status on app.campaigns")
    op.execute("drop function app.operator_status_change()")
    op.execute("revoke all on all tables in schema app from penguin_operator")
    op.execute("revoke execute on function app.bind_tenant(uuid) from penguin_operator")
    op.execute("revoke usage on schema app from penguin_operator")
    # The role stays: roles belong to the server, and other databases on it may still use it.
