"""Enrollments: time-ordered ids, three indexes instead of six, and a set-based step check.

A pass moves every due enrollment with a few UPDATEs (`engine.sequence.steps`), and each moved
row is a new row version with an entry in every index of `campaign_contacts`. With six indexes
and a foreign key on the step, a million moves cost 29 s here, of which the writing of those
entries and the per-row key check were most:

* **Ids** are version 7 UUIDs (`app.uuid7()`, as contacts since 0003): enrollments enrolled
  together sit together in the key index, so the entries of a statement's rows land on a few
  pages instead of one random page each.
* **One key index.** Every reference to an enrollment is `(tenant_id, id)`: that becomes the
  primary key, and the unique index on `id` alone goes.
* **One enrollment per contact and campaign**, `(tenant_id, contact_id, campaign_id)`: contact
  first, so the same index finds a contact's enrollments (exits, the cascade from contacts) and
  the separate index on `contact_id` goes.
* **One due index**, `(next_run_at, current_step_id)` of enrollments on their way: the claim
  reads it in due order, and a step's due enrollments are a filter on the index entries of the
  due range, not heap visits. It replaces `(next_run_at)` and `(current_step_id, next_run_at)`.
* **The step check is set-based.** The foreign key `(tenant_id, current_step_id)` ran a query
  per row whose step changed: a million for a million moves (9 s here). A statement-level
  trigger checks the statement's rows at once -- their distinct (campaign, step) pairs -- and
  checks more: the step must belong to the enrollment's own campaign. A key's check also
  locked the step against deletion; here nothing has to, because the engine's role cannot
  delete steps at all (a step taken out of a campaign file is soft-deleted, `removed_at`;
  a campaign's deletion takes its enrollments with it) and a step's keys never change. When
  the owner deletes a step, the enrollments on it are set to no step, as the key's
  `on delete set null` did. Rows written before this revision are checked once, here.
* **Room for new versions.** Every step an enrollment takes writes a new version of its row.
  Pages are filled to half, so the next version fits on the row's own page (one page written,
  not two; and a write that changes no indexed column, such as a lease, skips the indexes),
  and the key indexes to 60%, so a pass over every enrollment does not first split every
  index page.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

SEARCH_PATH = "pg_catalog, app"

UPGRADE = """
alter table app.campaign_contacts alter column id set default app.uuid7();

alter table app.sent_emails drop constraint sent_emails_tenant_id_campaign_contact_id_fkey;
alter table app.campaign_contacts drop constraint campaign_contacts_pkey;
alter table app.campaign_contacts drop constraint campaign_contacts_tenant_id_id_key;
alter table app.campaign_contacts
    add constraint campaign_contacts_pkey primary key (tenant_id, id) with (fillfactor = 60);
alter table app.sent_emails add constraint sent_emails_tenant_id_campaign_contact_id_fkey
    foreign key (tenant_id, campaign_contact_id)
    references app.campaign_contacts (tenant_id, id) on delete cascade;

alter table app.campaign_contacts drop constraint campaign_contacts_campaign_id_contact_id_key;
drop index app.campaign_contacts_contact_idx;
alter table app.campaign_contacts add constraint campaign_contacts_contact_id_campaign_id_key
    unique (tenant_id, contact_id, campaign_id) with (fillfactor = 60);

drop index app.campaign_contacts_due_idx;
drop index app.campaign_contacts_step_due_idx;
create index campaign_contacts_due_idx on app.campaign_contacts (next_run_at, current_step_id)
    where status in ('enrolled', 'active');

alter table app.campaign_contacts set (fillfactor = 50);

alter table app.campaign_contacts drop constraint campaign_contacts_tenant_id_current_step_id_fkey;

-- The engine's role takes steps out of campaigns by marking them removed, never by deleting.
revoke delete on app.campaign_steps from penguin_app;

do $$
declare
    stray bigint;
begin
    select count(*) into stray from app.campaign_contacts cc
    where cc.current_step_id is not null and not exists (
        select from app.campaign_steps s
        where s.tenant_id = cc.tenant_id and s.campaign_id = cc.campaign_id
          and s.id = cc.current_step_id
    );
    if stray > 0 then
        raise exception '% enrollment(s) stand on a step of another campaign', stray
            using hint = 'set their current_step_id to a step of their own campaign, or null';
    end if;
end
$$;

-- The rows a statement wrote stand on steps of their own campaigns.
create function app.check_enrollment_steps() returns trigger
language plpgsql
set search_path = pg_catalog, app
as $$
declare
    missing bigint;
begin
    select count(*) into missing
    from (
        select distinct n.tenant_id, n.campaign_id, n.current_step_id
        from new_enrollments n where n.current_step_id is not null
    ) w
    where not exists (
        select from app.campaign_steps s
        where s.tenant_id = w.tenant_id and s.campaign_id = w.campaign_id
          and s.id = w.current_step_id
    );
    if missing > 0 then
        raise foreign_key_violation using
            message = 'campaign_contacts: current_step_id is not a step of the '
                || 'enrollment''s campaign',
            constraint = 'campaign_contacts_current_step_check';
    end if;
    return null;
end
$$;
create trigger campaign_contacts_current_step_on_insert after insert on app.campaign_contacts
    referencing new table as new_enrollments
    for each statement execute function app.check_enrollment_steps();
create trigger campaign_contacts_current_step_on_update after update on app.campaign_contacts
    referencing new table as new_enrollments
    for each statement execute function app.check_enrollment_steps();

create function app.release_deleted_steps() returns trigger
language plpgsql
set search_path = pg_catalog, app
as $$
begin
    update app.campaign_contacts cc set current_step_id = null
    from old_steps o
    where cc.tenant_id = o.tenant_id and cc.current_step_id = o.id;
    return null;
end
$$;
create trigger campaign_steps_release_enrollments after delete on app.campaign_steps
    referencing old table as old_steps
    for each statement execute function app.release_deleted_steps();

create function app.refuse_step_key_change() returns trigger
language plpgsql
set search_path = pg_catalog, app
as $$
begin
    raise foreign_key_violation using
        message = 'campaign_steps: a step''s id, tenant and campaign never change',
        constraint = 'campaign_contacts_current_step_check';
end
$$;
create trigger campaign_steps_keys_never_change
    before update of id, tenant_id, campaign_id on app.campaign_steps
    for each row when (
        old.id is distinct from new.id or old.tenant_id is distinct from new.tenant_id
        or old.campaign_id is distinct from new.campaign_id
    )
    execute function app.refuse_step_key_change();
"""

DOWNGRADE = """
drop trigger campaign_steps_keys_never_change on app.campaign_steps;
drop function app.refuse_step_key_change();
drop trigger campaign_steps_release_enrollments on app.campaign_steps;
drop function app.release_deleted_steps();
drop trigger campaign_contacts_current_step_on_update on app.campaign_contacts;
drop trigger campaign_contacts_current_step_on_insert on app.campaign_contacts;
drop function app.check_enrollment_steps();
grant delete on app.campaign_steps to penguin_app;
alter table app.campaign_contacts add constraint campaign_contacts_tenant_id_current_step_id_fkey
    foreign key (tenant_id, current_step_id)
    references app.campaign_steps (tenant_id, id) on delete set null (current_step_id);

alter table app.campaign_contacts reset (fillfactor);

drop index app.campaign_contacts_due_idx;
create index campaign_contacts_due_idx on app.campaign_contacts (next_run_at)
    where status in ('enrolled', 'active');
create index campaign_contacts_step_due_idx on app.campaign_contacts (current_step_id, next_run_at)
    where status in ('enrolled', 'active');

alter table app.campaign_contacts drop constraint campaign_contacts_contact_id_campaign_id_key;
create index campaign_contacts_contact_idx on app.campaign_contacts (contact_id);
alter table app.campaign_contacts add constraint campaign_contacts_campaign_id_contact_id_key
    unique (tenant_id, campaign_id, contact_id);

alter table app.sent_emails drop constraint sent_emails_tenant_id_campaign_contact_id_fkey;
alter table app.campaign_contacts drop constraint campaign_contacts_pkey;
alter table app.campaign_contacts add constraint campaign_contacts_pkey primary key (id);
alter table app.campaign_contacts add constraint campaign_contacts_tenant_id_id_key
    unique (tenant_id, id);
alter table app.sent_emails add constraint sent_emails_tenant_id_campaign_contact_id_fkey
    foreign key (tenant_id, campaign_contact_id)
    references app.campaign_contacts (tenant_id, id) on delete cascade;

alter table app.campaign_contacts alter column id set default gen_random_uuid();
"""


def upgrade() -> None:
    op.execute(f"set local search_path = {SEARCH_PATH}")
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(f"set local search_path = {SEARCH_PATH}")
    op.execute(DOWNGRADE)
