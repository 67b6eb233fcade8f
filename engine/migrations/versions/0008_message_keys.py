"""Messages: time-ordered ids, one key index, settlements that stay on their page, and a tenant
lookup whose plan is kept.

A message row is written three times: queued at the claim, `sending` just before its SMTP
conversation, settled right after it. Each of those writes made a new entry in every one of the
eight indexes of `sent_emails`, because two of them held `sent_at`, which the settlement sets.

* **Ids** are version 7 UUIDs (`app.uuid7()`, as contacts and enrollments): a batch's messages
  sit together in the key index.
* **One key index.** Every reference to a message is `(tenant_id, id)`: that becomes the primary
  key, and the unique index on `id` alone goes.
* **No index on `sent_at`.** Nothing reads by it: limits count messages by `queued_at`
  (`sent_emails_campaign_queued_idx`, `sent_emails_sender_queued_idx`), the marts read
  `updated_at`. With no indexed column changing after the claim, and pages filled to 70% so the
  next version fits beside the row, marking and settling a message write its page and no index.
* **`app.current_tenant_id()`** is evaluated once per table of every statement under row-level
  security (a dozen times in a settlement). As an SQL function it was planned at every call; in
  PL/pgSQL its lookup is planned once per session.
* **`app.bind_tenant()`**, once per transaction, cleared the bindings of finished transactions
  every time, walking the dead rows its predecessors left; now one transaction in sixteen
  does, and the first binding of a transaction is one statement (its insert), not two.
* **Statistics the engine can refresh.** A campaign's first pass on a new server writes
  thousands of messages and enrollments into tables autovacuum last analyzed empty, if at all;
  planned on those statistics, each mark and settlement read every message of the tenant (one
  looked like a handful), so the pass slowed with every message. `app.refresh_statistics()`
  (owner's rights, for `penguin_app`) analyzes the engine's tables that changed by more than a
  quarter (and a thousand rows) since their last analysis, at most once in ten seconds each,
  and none that another session is analyzing or vacuuming; otherwise it does nothing, so
  calling it before every batch costs a look at the counters.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

SEARCH_PATH = "pg_catalog, app"

#: The function of 0004, as SQL (the downgrade puts it back) and as PL/pgSQL.
CURRENT_TENANT_SQL = f"""
create or replace function app.current_tenant_id() returns uuid
language sql stable security definer parallel restricted
set search_path = {SEARCH_PATH}, pg_temp
as $$
    select b.tenant_id from app.tenant_bindings b where b.xid = pg_current_xact_id_if_assigned()
$$;
"""
# NULL when this transaction has bound no tenant (`_if_assigned`: asking must not assign an xid
# to a read-only transaction).
CURRENT_TENANT_PLPGSQL = f"""
create or replace function app.current_tenant_id() returns uuid
language plpgsql stable security definer parallel restricted
set search_path = {SEARCH_PATH}, pg_temp
as $$
begin
    return (
        select b.tenant_id from app.tenant_bindings b
        where b.xid = pg_current_xact_id_if_assigned()
    );
end
$$;
"""

#: The function of 0004, and the one that replaces it (same checks, same errors).
_BIND_TENANT = """
create or replace function app.bind_tenant(tenant uuid) returns uuid
language plpgsql volatile security definer
set search_path = {search_path}, pg_temp
as $$
declare
    bound uuid;
begin
    if tenant is null or not exists (select from app.tenants t where t.id = tenant) then
        raise exception 'no tenant with id %', tenant using errcode = 'foreign_key_violation';
    end if;
{body}
    if bound <> tenant then
        raise exception 'this transaction acts for another tenant; its tenant cannot be switched'
            using errcode = 'insufficient_privilege';
    end if;
{cleanup}
    return tenant;
end
$$;
"""
_CLEANUP = """\
    -- Bindings of finished transactions (below the oldest running one) go; rows another
    -- transaction is deleting are skipped rather than waited for.
    delete from app.tenant_bindings b using (
        select s.xid from app.tenant_bindings s
        where s.xid < pg_snapshot_xmin(pg_current_snapshot())
        for update skip locked
    ) stale
    where b.xid = stale.xid;"""
BIND_TENANT_0004 = _BIND_TENANT.format(
    search_path=SEARCH_PATH,
    body="""\
    insert into app.tenant_bindings (xid, tenant_id) values (pg_current_xact_id(), tenant)
    on conflict (xid) do nothing;
    select b.tenant_id into bound from app.tenant_bindings b where b.xid = pg_current_xact_id();""",
    cleanup=_CLEANUP,
)
BIND_TENANT = _BIND_TENANT.format(
    search_path=SEARCH_PATH,
    body="""\
    insert into app.tenant_bindings (xid, tenant_id) values (pg_current_xact_id(), tenant)
    on conflict (xid) do nothing
    returning tenant_id into bound;
    if bound is null then  -- bound before in this transaction: to which tenant?
        select b.tenant_id into bound from app.tenant_bindings b
        where b.xid = pg_current_xact_id();
    end if;""",
    cleanup="""    if (pg_current_xact_id()::text::bigint) % 16 = 0 then
"""
    + "\n".join("    " + line for line in _CLEANUP.splitlines())
    + """
    end if;""",
)

REFRESH_STATISTICS = f"""
create function app.refresh_statistics() returns integer
language plpgsql volatile security definer
set search_path = {SEARCH_PATH}, pg_temp
as $$
declare
    stale record;
    analyzed integer := 0;
begin
    for stale in
        select s.relname from pg_catalog.pg_stat_user_tables s
        join pg_catalog.pg_class c on c.oid = s.relid
        where s.schemaname = 'app'
          and s.relname in ('campaign_contacts', 'sent_emails', 'contacts',
                            'contact_list_members', 'email_events')
          and s.n_mod_since_analyze > 1000 + 0.25 * greatest(c.reltuples, 0)
          -- at most once in ten seconds a table, whoever calls
          and coalesce(greatest(s.last_analyze, s.last_autoanalyze), '-infinity')
              < pg_catalog.now() - interval '10 seconds'
        order by s.relname
    loop
        -- skip_locked: a table that autovacuum or another engine is working on is left alone
        execute pg_catalog.format('analyze (skip_locked) app.%I', stale.relname);
        analyzed := analyzed + 1;
    end loop;
    return analyzed;
end
$$;
revoke execute on function app.refresh_statistics() from public;
grant execute on function app.refresh_statistics() to penguin_app;
"""

UPGRADE = """
alter table app.sent_emails alter column id set default app.uuid7();

alter table app.email_events drop constraint email_events_tenant_id_sent_email_id_fkey;
alter table app.sent_emails drop constraint sent_emails_pkey;
alter table app.sent_emails drop constraint sent_emails_tenant_id_id_key;
alter table app.sent_emails add constraint sent_emails_pkey primary key (tenant_id, id);
alter table app.email_events add constraint email_events_tenant_id_sent_email_id_fkey
    foreign key (tenant_id, sent_email_id)
    references app.sent_emails (tenant_id, id) on delete set null (sent_email_id);

drop index app.sent_emails_tenant_sent_at_idx;
drop index app.sent_emails_sender_sent_at_idx;

alter table app.sent_emails set (fillfactor = 70);
"""

DOWNGRADE = """
alter table app.sent_emails reset (fillfactor);

create index sent_emails_tenant_sent_at_idx on app.sent_emails (tenant_id, sent_at);
create index sent_emails_sender_sent_at_idx on app.sent_emails (sender_account_id, sent_at);

alter table app.email_events drop constraint email_events_tenant_id_sent_email_id_fkey;
alter table app.sent_emails drop constraint sent_emails_pkey;
alter table app.sent_emails add constraint sent_emails_pkey primary key (id);
alter table app.sent_emails add constraint sent_emails_tenant_id_id_key unique (tenant_id, id);
alter table app.email_events add constraint email_events_tenant_id_sent_email_id_fkey
    foreign key (tenant_id, sent_email_id)
    references app.sent_emails (tenant_id, id) on delete set null (sent_email_id);

alter table app.sent_emails alter column id set default gen_random_uuid();
"""


def upgrade() -> None:
    op.execute(f"set local search_path = {SEARCH_PATH}")
    op.execute(UPGRADE)
    op.execute(CURRENT_TENANT_PLPGSQL)
    op.execute(BIND_TENANT)
    op.execute(REFRESH_STATISTICS)


def downgrade() -> None:
    op.execute(f"set local search_path = {SEARCH_PATH}")
    op.execute("drop function app.refresh_statistics()")
    op.execute(BIND_TENANT_0004)
    op.execute(CURRENT_TENANT_SQL)
    op.execute(DOWNGRADE)
