"""Least privilege: a read-only dashboards role, fixed search paths, a transaction's tenant
that cannot be switched, tenants visible to their own transactions only, and unique keys that
never reveal another tenant's rows.

* **Search paths.** A role whose `search_path` holds a schema someone else can create in
  (`"$user"`, `public`) resolves unqualified names and operators there: a schema named
  `penguin_app` holding `||(text, uuid)` would have run as the application role in every upload.
  Every role gets `pg_catalog, app` (`app` is written by the owner only) and every function a
  `SET search_path`. Database-level CREATE is revoked in `engine.migrate` (it is not copied with
  a database) and the `analytics_*` schemas dbt writes are created there by the owner.
* **The transaction's tenant.** It used to be a setting (`set_config('app.tenant_id', ...)`), so
  any SQL running as the application role could set it again and act for another tenant. Now
  `app.bind_tenant(id)` records it in `app.tenant_bindings` under the transaction's id, a table
  only the owner can write, and refuses a second, different tenant in the same transaction;
  `app.current_tenant_id()` reads it from there, so no setting can change it.
* **Tenants.** The application role sees only its transaction's tenant in `app.tenants`; outside
  any tenant's transaction it may look tenants up through `app.tenant_directory()` (the engine
  picks which tenant each transaction acts for).
* **Unique keys.** A unique key without `tenant_id` answers "duplicate key" when another tenant
  already has that value, revealing it (a Message-ID seen in a header, a campaign's id): each one
  now includes `tenant_id`. Surrogate primary keys (random UUIDs, identities) stay as they are.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

SEARCH_PATH = "pg_catalog, app"

ROLES = f"""
do $$
begin
  if not exists (select from pg_catalog.pg_roles where rolname = 'penguin_dashboards') then
    create role penguin_dashboards login nosuperuser nobypassrls nocreatedb nocreaterole;
  end if;
end
$$;
alter role penguin_app set search_path = {SEARCH_PATH};
alter role penguin_analytics set search_path = {SEARCH_PATH};
alter role penguin_dashboards set search_path = {SEARCH_PATH};
-- The dashboards only ever read; a statement that writes fails even if a grant slips in.
alter role penguin_dashboards set default_transaction_read_only = on;
"""

# Built from pieces of known sizes; qualified names so it does not depend on a search path.
TENANT_BINDING = f"""
create unlogged table app.tenant_bindings (
    xid         xid8 primary key,
    tenant_id   uuid not null,
    bound_at    timestamptz not null default pg_catalog.now()
);
comment on table app.tenant_bindings is
    'The tenant each running transaction acts for (see app.bind_tenant); owner-only. Unlogged: '
    'a binding lives no longer than its transaction, so nothing here needs to survive a crash.';

create function app.bind_tenant(tenant uuid) returns uuid
language plpgsql volatile security definer
set search_path = {SEARCH_PATH}, pg_temp
as $$
declare
    bound uuid;
begin
    if tenant is null or not exists (select from app.tenants t where t.id = tenant) then
        raise exception 'no tenant with id %', tenant using errcode = 'foreign_key_violation';
    end if;
    insert into app.tenant_bindings (xid, tenant_id) values (pg_current_xact_id(), tenant)
    on conflict (xid) do nothing;
    select b.tenant_id into bound from app.tenant_bindings b where b.xid = pg_current_xact_id();
    if bound <> tenant then
        raise exception 'this transaction acts for another tenant; its tenant cannot be switched'
            using errcode = 'insufficient_privilege';
    end if;
    -- Bindings of finished transactions (below the oldest running one) go; rows another
    -- transaction is deleting are skipped rather than waited for.
    delete from app.tenant_bindings b using (
        select s.xid from app.tenant_bindings s
        where s.xid < pg_snapshot_xmin(pg_current_snapshot())
        for update skip locked
    ) stale
    where b.xid = stale.xid;
    return tenant;
end
$$;

-- NULL when this transaction has bound no tenant (`_if_assigned`: asking must not assign an
-- xid to a read-only transaction).
create or replace function app.current_tenant_id() returns uuid
language sql stable security definer parallel restricted
set search_path = {SEARCH_PATH}, pg_temp
as $$
    select b.tenant_id from app.tenant_bindings b where b.xid = pg_current_xact_id_if_assigned()
$$;

create function app.tenant_directory() returns table (id uuid, name text)
language plpgsql stable security definer
set search_path = {SEARCH_PATH}, pg_temp
as $$
begin
    if app.current_tenant_id() is not null then
        raise exception 'the tenant directory cannot be read inside a tenant''s transaction'
            using errcode = 'insufficient_privilege';
    end if;
    return query select t.id, t.name from app.tenants t order by t.name;
end
$$;

revoke all on app.tenant_bindings from public;
revoke execute on function app.bind_tenant(uuid) from public;
revoke execute on function app.tenant_directory() from public;
grant execute on function app.bind_tenant(uuid) to penguin_app;
grant execute on function app.tenant_directory() to penguin_app;

alter function app.uuid7() set search_path = {SEARCH_PATH}, pg_temp;

-- Not forced: the owner creates and lists tenants.
alter table app.tenants enable row level security;
create policy tenant_self on app.tenants for select to penguin_app
    using (id = (select app.current_tenant_id()));
create policy analytics_read_all on app.tenants for select to penguin_analytics using (true);

-- SMTP password variables are named after their tenant (PENGUIN_SMTP_<TENANT>__<NAME>): no two
-- tenants may share that form ("a-b" and "a_b" would).
create unique index tenants_variable_name_key
    on app.tenants (upper(translate(name, '-', '_')));
"""


def _policies(condition: str) -> str:
    """Every tenant table's isolation policy (made in 0001), recreated with `condition`."""
    return f"""
do $$
declare
    t text;
begin
    for t in select tablename from pg_catalog.pg_policies
             where schemaname = 'app' and policyname = 'tenant_isolation'
    loop
        execute pg_catalog.format('drop policy tenant_isolation on app.%I', t);
        execute pg_catalog.format(
            'create policy tenant_isolation on app.%I using (tenant_id = {condition}) '
            'with check (tenant_id = {condition})', t);
    end loop;
end
$$;
"""


# (table, old constraint, new definition)
UNIQUE_KEYS = (
    ("campaign_settings", "campaign_settings_pkey", "primary key (tenant_id, campaign_id)"),
    (
        "campaign_steps",
        "campaign_steps_campaign_id_step_order_key",
        "unique (tenant_id, campaign_id, step_order)",
    ),
    (
        "campaign_contacts",
        "campaign_contacts_campaign_id_contact_id_key",
        "unique (tenant_id, campaign_id, contact_id)",
    ),
    ("sent_emails", "sent_emails_message_id_key", "unique (tenant_id, message_id)"),
    (
        "sent_emails",
        "sent_emails_campaign_contact_id_step_id_key",
        "unique (tenant_id, campaign_contact_id, step_id)",
    ),
    (
        "contact_list_members",
        "contact_list_members_pkey",
        "primary key (tenant_id, list_id, contact_id)",
    ),
    (
        "campaign_approvals",
        "campaign_approvals_campaign_id_approver_approval_role_key",
        "unique (tenant_id, campaign_id, approver, approval_role)",
    ),
)


def _swap_keys(keys: tuple[tuple[str, str, str], ...]) -> str:
    return "\n".join(
        f"alter table app.{table} drop constraint {name}, add constraint {name} {definition};"
        for table, name, definition in keys
    )


def upgrade() -> None:
    op.execute(f"set local search_path = {SEARCH_PATH}")
    op.execute(ROLES)
    op.execute(TENANT_BINDING)
    # A scalar subquery is evaluated once per statement, not once per row.
    op.execute(_policies("(select app.current_tenant_id())"))
    op.execute(_swap_keys(UNIQUE_KEYS))


_OLD_KEYS = (
    ("campaign_settings", "campaign_settings_pkey", "primary key (campaign_id)"),
    (
        "campaign_steps",
        "campaign_steps_campaign_id_step_order_key",
        "unique (campaign_id, step_order)",
    ),
    (
        "campaign_contacts",
        "campaign_contacts_campaign_id_contact_id_key",
        "unique (campaign_id, contact_id)",
    ),
    ("sent_emails", "sent_emails_message_id_key", "unique (message_id)"),
    (
        "sent_emails",
        "sent_emails_campaign_contact_id_step_id_key",
        "unique (campaign_contact_id, step_id)",
    ),
    ("contact_list_members", "contact_list_members_pkey", "primary key (list_id, contact_id)"),
    (
        "campaign_approvals",
        "campaign_approvals_campaign_id_approver_approval_role_key",
        "unique (campaign_id, approver, approval_role)",
    ),
)


def downgrade() -> None:
    op.execute(_swap_keys(_OLD_KEYS))
    op.execute(_policies("app.current_tenant_id()"))
    op.execute(
        """
drop index app.tenants_variable_name_key;
drop policy analytics_read_all on app.tenants;
drop policy tenant_self on app.tenants;
alter table app.tenants disable row level security;
alter function app.uuid7() reset search_path;
drop function app.tenant_directory();
drop function app.bind_tenant(uuid);
create or replace function app.current_tenant_id() returns uuid
language sql stable parallel safe
as $$ select nullif(current_setting('app.tenant_id', true), '')::uuid $$;
drop table app.tenant_bindings;
alter role penguin_app reset search_path;
alter role penguin_analytics reset search_path;
"""
    )
