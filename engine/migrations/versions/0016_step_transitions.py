"""Step transitions: every step an enrollment entered and left, for the sequence funnel.

`app.campaign_contacts` holds where an enrollment stands now; the Sequence dashboard needs where
it has been: how many reached each step, went on, took each branch of a condition, or left
and why. The engine moves an enrollment one step per statement, in set-based UPDATEs from
several places (`engine.sequence.steps`, the sending store), so the history is recorded where
all of them meet, by two statement-level triggers on `campaign_contacts`:

* **AFTER INSERT**: an enrollment entered its first step (`from_step_id` NULL, outcome
  `entered`);
* **AFTER UPDATE**: one row per enrollment whose step changed, or that completed or exited in
  this statement (`moved`, `completed`: `to_step_id` NULL, `exited` with its `exit_reason`).
  A step deleted under an enrollment (the foreign key's SET NULL, which may run as the owner
  outside any tenant's transaction, as a tenant's deletion does) writes nothing.

Each trigger reads the statement's transition tables once (one INSERT ... SELECT, whatever the
number of rows), so a million enrollments moved cost one more set-based insert, and a lease
claim, which changes no step, costs a join that finds nothing. `occurred_at` is the row's own
`updated_at` (`enrolled_at` on insert): the pass's time, the engine's clock, not the server's.

The functions are SECURITY DEFINER with a fixed search path: the application role writes the
history through them and has no grant on the table itself (it may only read its tenant's
rows). The table has row-level security like every tenant table; the analytics role reads all.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

SEARCH_PATH = "pg_catalog, app"

UPGRADE = f"""
create table app.step_transitions (
    id                  bigint generated always as identity primary key,
    tenant_id           uuid not null references app.tenants (id) on delete cascade,
    campaign_id         uuid not null,
    campaign_contact_id uuid not null,
    contact_id          uuid not null,
    -- NULL: the enrollment began here.
    from_step_id        uuid,
    -- NULL: the enrollment left the sequence (completed or exited).
    to_step_id          uuid,
    outcome             text not null
                        check (outcome in ('entered', 'moved', 'completed', 'exited')),
    exit_reason         text,
    occurred_at         timestamptz not null
);
comment on table app.step_transitions is
    'Every step an enrollment entered and left (triggers on campaign_contacts; migration 0016).';
create index step_transitions_campaign_idx
    on app.step_transitions (tenant_id, campaign_id, occurred_at);
alter table app.step_transitions enable row level security;
alter table app.step_transitions force row level security;
create policy tenant_isolation on app.step_transitions
    using (tenant_id = (select app.current_tenant_id()))
    with check (tenant_id = (select app.current_tenant_id()));
create policy analytics_read_all on app.step_transitions
    for select to penguin_analytics using (true);
grant select on app.step_transitions to penguin_app, penguin_analytics;

create function app.record_enrollments() returns trigger
language plpgsql security definer
set search_path = {SEARCH_PATH}, pg_temp
as $$
begin
    insert into app.step_transitions
        (tenant_id, campaign_id, campaign_contact_id, contact_id, from_step_id, to_step_id,
         outcome, exit_reason, occurred_at)
    select n.tenant_id, n.campaign_id, n.id, n.contact_id, null, n.current_step_id,
           'entered', null, n.enrolled_at
    from entered n;
    return null;
end
$$;

create function app.record_step_transitions() returns trigger
language plpgsql security definer
set search_path = {SEARCH_PATH}, pg_temp
as $$
begin
    insert into app.step_transitions
        (tenant_id, campaign_id, campaign_contact_id, contact_id, from_step_id, to_step_id,
         outcome, exit_reason, occurred_at)
    select n.tenant_id, n.campaign_id, n.id, n.contact_id, o.current_step_id,
           case when n.status in ('completed', 'exited') then null else n.current_step_id end,
           case when n.status = 'exited' then 'exited'
                when n.status = 'completed' then 'completed'
                else 'moved' end,
           case when n.status = 'exited' then n.exit_reason end,
           n.updated_at
    from changed n
    join previous o on o.id = n.id
    -- A step deleted under an enrollment (its key sets current_step_id to NULL) is no move:
    -- the engine ends that enrollment at its next pass, which is recorded then.
    where (n.current_step_id is distinct from o.current_step_id
           and n.current_step_id is not null
           and n.status not in ('completed', 'exited'))
       or (n.status in ('completed', 'exited') and n.status is distinct from o.status);
    return null;
end
$$;

revoke execute on function app.record_enrollments() from public;
revoke execute on function app.record_step_transitions() from public;

create trigger campaign_contacts_entered after insert on app.campaign_contacts
referencing new table as entered
for each statement execute function app.record_enrollments();
create trigger campaign_contacts_moved after update on app.campaign_contacts
referencing old table as previous new table as changed
for each statement execute function app.record_step_transitions();
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(
        """
        drop trigger campaign_contacts_moved on app.campaign_contacts;
        drop trigger campaign_contacts_entered on app.campaign_contacts;
        drop function app.record_step_transitions();
        drop function app.record_enrollments();
        drop table app.step_transitions;
        """
    )
