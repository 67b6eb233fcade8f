"""The whole data model of ARCHITECTURE.md, its roles, grants and row-level security.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ROLES = """
do $$
begin
  if not exists (select from pg_roles where rolname = 'penguin_app') then
    create role penguin_app login nosuperuser nobypassrls nocreatedb nocreaterole;
  end if;
  if not exists (select from pg_roles where rolname = 'penguin_analytics') then
    create role penguin_analytics login nosuperuser nobypassrls nocreatedb nocreaterole;
  end if;
end
$$;
"""

# Foreign keys between tenant-owned tables include tenant_id: (tenant_id, x_id) references
# (tenant_id, id). Row-level security does not apply to foreign-key checks, so a plain key on
# id alone would let one tenant point at another tenant's rows. `on delete set null (x_id)`
# (PostgreSQL 15+) clears only the reference, never tenant_id.
TABLES = """
-- The tenant a transaction acts for, set with SET LOCAL app.tenant_id; NULL when unset
-- (a transaction-local setting reverts to '' rather than NULL once it has been used).
create function app.current_tenant_id() returns uuid
language sql stable parallel safe
as $$ select nullif(current_setting('app.tenant_id', true), '')::uuid $$;

create table app.tenants (
    id          uuid primary key default gen_random_uuid(),
    name        text not null unique check (name ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    created_at  timestamptz not null default now()
);

create table app.sender_accounts (
    id                  uuid primary key default gen_random_uuid(),
    tenant_id           uuid not null references app.tenants (id) on delete cascade,
    email               text not null,
    display_name        text,
    -- NULL host: the local SMTP sink of the embedded setup.
    smtp_host           text,
    smtp_port           integer check (smtp_port between 1 and 65535),
    smtp_security       text not null default 'starttls'
                        check (smtp_security in ('none', 'starttls', 'tls')),
    smtp_username       text,
    -- Name of the environment variable that holds the password; never the password itself.
    -- Only PENGUIN_SMTP_* variables, so an account cannot read the process's other secrets.
    smtp_password_env   text check (smtp_password_env ~ '^PENGUIN_SMTP_[A-Z0-9_]+$'),
    daily_limit         integer not null default 200 check (daily_limit > 0),
    min_gap_seconds     integer not null default 60 check (min_gap_seconds >= 0),
    is_active           boolean not null default true,
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now(),
    unique (tenant_id, id)
);
create unique index sender_accounts_email_key on app.sender_accounts (tenant_id, lower(email));

create table app.templates (
    id          uuid primary key default gen_random_uuid(),
    tenant_id   uuid not null references app.tenants (id) on delete cascade,
    name        text not null,
    subject     text not null,
    body_text   text not null,
    body_html   text,
    variables   jsonb not null default '[]'::jsonb,
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now(),
    unique (tenant_id, name),
    unique (tenant_id, id)
);

create table app.contact_lists (
    id          uuid primary key default gen_random_uuid(),
    tenant_id   uuid not null references app.tenants (id) on delete cascade,
    name        text not null,
    description text,
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now(),
    unique (tenant_id, name),
    unique (tenant_id, id)
);

create table app.upload_batches (
    id              uuid primary key default gen_random_uuid(),
    tenant_id       uuid not null references app.tenants (id) on delete cascade,
    list_id         uuid,
    file_name       text not null,
    content_sha256  text not null,
    column_mapping  jsonb not null default '{}'::jsonb,
    status          text not null default 'pending'
                    check (status in ('pending', 'processing', 'completed', 'failed')),
    total_rows      integer not null default 0,
    inserted_count  integer not null default 0,
    updated_count   integer not null default 0,
    duplicate_count integer not null default 0,
    rejected_count  integer not null default 0,
    error           text,
    created_at      timestamptz not null default now(),
    started_at      timestamptz,
    finished_at     timestamptz,
    unique (tenant_id, id),
    foreign key (tenant_id, list_id)
        references app.contact_lists (tenant_id, id) on delete set null (list_id)
);
create index upload_batches_tenant_hash_idx on app.upload_batches (tenant_id, content_sha256);

create table app.upload_rejects (
    id          bigint generated always as identity primary key,
    tenant_id   uuid not null references app.tenants (id) on delete cascade,
    batch_id    uuid not null,
    line_number integer not null,
    raw_row     text not null,
    reason      text not null,
    foreign key (tenant_id, batch_id)
        references app.upload_batches (tenant_id, id) on delete cascade
);
create index upload_rejects_batch_idx on app.upload_rejects (batch_id, line_number);

create table app.contacts (
    id               uuid primary key default gen_random_uuid(),
    tenant_id        uuid not null references app.tenants (id) on delete cascade,
    email            text not null,
    first_name       text,
    last_name        text,
    full_name        text,
    company          text,
    job_title        text,
    phone            text,
    website          text,
    city             text,
    country          text,
    timezone         text,
    lead_score       integer,
    is_role_address  boolean not null default false,
    status           text not null default 'active'
                     check (status in ('active', 'unsubscribed', 'bounced', 'complained')),
    raw_data         jsonb not null default '{}'::jsonb,
    attributes       jsonb not null default '{}'::jsonb,
    upload_batch_id  uuid,
    created_at       timestamptz not null default now(),
    updated_at       timestamptz not null default now(),
    unique (tenant_id, id),
    foreign key (tenant_id, upload_batch_id)
        references app.upload_batches (tenant_id, id) on delete set null (upload_batch_id)
);
-- Addresses compare case-insensitively: John@Example.com and john@example.com are one contact.
create unique index contacts_email_key on app.contacts (tenant_id, lower(email));

create table app.contact_list_members (
    tenant_id   uuid not null references app.tenants (id) on delete cascade,
    list_id     uuid not null,
    contact_id  uuid not null,
    added_at    timestamptz not null default now(),
    primary key (list_id, contact_id),
    foreign key (tenant_id, list_id) references app.contact_lists (tenant_id, id) on delete cascade,
    foreign key (tenant_id, contact_id) references app.contacts (tenant_id, id) on delete cascade
);
create index contact_list_members_contact_idx on app.contact_list_members (contact_id);

create table app.suppressions (
    id          uuid primary key default gen_random_uuid(),
    tenant_id   uuid not null references app.tenants (id) on delete cascade,
    email       text not null,
    reason      text not null
                check (reason in ('unsubscribe', 'bounce', 'complaint', 'manual')),
    detail      text,
    created_at  timestamptz not null default now()
);
-- The send-time lookup: is this address suppressed for this tenant?
create unique index suppressions_email_key on app.suppressions (tenant_id, lower(email));

create table app.campaigns (
    id                  uuid primary key default gen_random_uuid(),
    tenant_id           uuid not null references app.tenants (id) on delete cascade,
    name                text not null,
    description         text,
    status              text not null default 'draft'
                        check (status in ('draft', 'scheduled', 'active', 'paused', 'completed')),
    list_id             uuid,
    sender_account_id   uuid,
    timezone            text not null default 'UTC',
    send_strategy       text not null default 'immediate'
                        check (send_strategy in ('immediate', 'scheduled', 'optimized')),
    start_at            timestamptz,
    end_at              timestamptz,
    launched_at         timestamptz,
    completed_at        timestamptz,
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now(),
    unique (tenant_id, name),
    unique (tenant_id, id),
    foreign key (tenant_id, list_id)
        references app.contact_lists (tenant_id, id) on delete set null (list_id),
    foreign key (tenant_id, sender_account_id)
        references app.sender_accounts (tenant_id, id) on delete set null (sender_account_id)
);
create index campaigns_tenant_status_idx on app.campaigns (tenant_id, status);

create table app.campaign_settings (
    campaign_id                  uuid primary key,
    tenant_id                    uuid not null references app.tenants (id) on delete cascade,
    send_window_start            time not null default '09:00',
    send_window_end              time not null default '18:00',
    -- ISO weekdays, 1 = Monday ... 7 = Sunday.
    send_days                    smallint[] not null default '{1,2,3,4,5}',
    daily_limit                  integer not null default 500 check (daily_limit > 0),
    delay_between_emails_seconds integer not null default 0
                                 check (delay_between_emails_seconds >= 0),
    stop_on_reply                boolean not null default true,
    track_opens                  boolean not null default true,
    track_clicks                 boolean not null default true,
    updated_at                   timestamptz not null default now(),
    foreign key (tenant_id, campaign_id) references app.campaigns (tenant_id, id) on delete cascade
);

create table app.campaign_steps (
    id                  uuid primary key default gen_random_uuid(),
    tenant_id           uuid not null references app.tenants (id) on delete cascade,
    campaign_id         uuid not null,
    step_order          integer not null check (step_order > 0),
    name                text,
    step_type           text not null check (step_type in ('email', 'wait', 'condition', 'action')),
    template_id         uuid,
    subject             text,
    body_text           text,
    body_html           text,
    wait_duration       interval,
    wait_until          timestamptz,
    condition_rules     jsonb,
    true_next_step_id   uuid,
    false_next_step_id  uuid,
    action_payload      jsonb,
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now(),
    unique (campaign_id, step_order),
    check (step_type <> 'email' or template_id is not null or
           (subject is not null and body_text is not null)),
    check (step_type <> 'wait' or wait_duration is not null or wait_until is not null),
    unique (tenant_id, id),
    foreign key (tenant_id, campaign_id) references app.campaigns (tenant_id, id) on delete cascade,
    foreign key (tenant_id, template_id)
        references app.templates (tenant_id, id) on delete restrict,
    foreign key (tenant_id, true_next_step_id)
        references app.campaign_steps (tenant_id, id) on delete set null (true_next_step_id),
    foreign key (tenant_id, false_next_step_id)
        references app.campaign_steps (tenant_id, id) on delete set null (false_next_step_id)
);

create table app.campaign_contacts (
    id                  uuid primary key default gen_random_uuid(),
    tenant_id           uuid not null references app.tenants (id) on delete cascade,
    campaign_id         uuid not null,
    contact_id          uuid not null,
    status              text not null default 'enrolled'
                        check (status in ('enrolled', 'active', 'paused', 'completed', 'exited')),
    current_step_id     uuid,
    next_run_at         timestamptz,
    steps_completed     integer not null default 0,
    last_email_sent_at  timestamptz,
    exit_reason         text,
    -- A worker owns a claimed enrollment until lease_expires_at; a crashed worker's
    -- claims fall due again when the lease runs out.
    lease_owner         text,
    lease_expires_at    timestamptz,
    enrolled_at         timestamptz not null default now(),
    started_at          timestamptz,
    completed_at        timestamptz,
    exited_at           timestamptz,
    updated_at          timestamptz not null default now(),
    unique (campaign_id, contact_id),
    unique (tenant_id, id),
    foreign key (tenant_id, campaign_id) references app.campaigns (tenant_id, id) on delete cascade,
    foreign key (tenant_id, contact_id) references app.contacts (tenant_id, id) on delete cascade,
    foreign key (tenant_id, current_step_id)
        references app.campaign_steps (tenant_id, id) on delete set null (current_step_id)
);
-- The engine's hottest query: enrollments that are due and not leased.
create index campaign_contacts_due_idx on app.campaign_contacts (next_run_at)
    where status in ('enrolled', 'active');
create index campaign_contacts_contact_idx on app.campaign_contacts (contact_id);

create table app.sent_emails (
    id                  uuid primary key default gen_random_uuid(),
    tenant_id           uuid not null references app.tenants (id) on delete cascade,
    campaign_contact_id uuid not null,
    campaign_id         uuid not null,
    step_id             uuid not null,
    contact_id          uuid not null,
    sender_account_id   uuid,
    recipient_email     text not null,
    subject             text not null,
    message_id          text not null unique,
    status              text not null default 'queued'
                        check (status in ('queued', 'sending', 'sent', 'failed', 'bounced',
                                          'unknown')),
    attempts            integer not null default 0,
    smtp_response       text,
    last_error          text,
    next_attempt_at     timestamptz,
    queued_at           timestamptz not null,
    sent_at             timestamptz,
    updated_at          timestamptz not null default now(),
    -- At most one message per (enrollment, step), ever.
    unique (campaign_contact_id, step_id),
    unique (tenant_id, id),
    foreign key (tenant_id, campaign_contact_id)
        references app.campaign_contacts (tenant_id, id) on delete cascade,
    foreign key (tenant_id, campaign_id) references app.campaigns (tenant_id, id) on delete cascade,
    foreign key (tenant_id, step_id)
        references app.campaign_steps (tenant_id, id) on delete cascade,
    foreign key (tenant_id, contact_id) references app.contacts (tenant_id, id) on delete cascade,
    foreign key (tenant_id, sender_account_id)
        references app.sender_accounts (tenant_id, id) on delete set null (sender_account_id)
);
create index sent_emails_tenant_sent_at_idx on app.sent_emails (tenant_id, sent_at);
create index sent_emails_sender_sent_at_idx on app.sent_emails (sender_account_id, sent_at);

create table app.email_events (
    id              bigint generated always as identity primary key,
    tenant_id       uuid not null references app.tenants (id) on delete cascade,
    event_type      text not null check (event_type in ('open', 'click', 'reply', 'bounce',
                                                        'unsubscribe', 'complaint')),
    sent_email_id   uuid,
    contact_id      uuid,
    campaign_id     uuid,
    step_id         uuid,
    occurred_at     timestamptz not null,
    recorded_at     timestamptz not null default now(),
    payload         jsonb not null default '{}'::jsonb,
    dedup_key       text not null,
    unique (tenant_id, dedup_key),
    foreign key (tenant_id, sent_email_id)
        references app.sent_emails (tenant_id, id) on delete set null (sent_email_id),
    foreign key (tenant_id, contact_id)
        references app.contacts (tenant_id, id) on delete set null (contact_id),
    foreign key (tenant_id, campaign_id)
        references app.campaigns (tenant_id, id) on delete set null (campaign_id),
    foreign key (tenant_id, step_id)
        references app.campaign_steps (tenant_id, id) on delete set null (step_id)
);
create index email_events_message_idx on app.email_events (sent_email_id, event_type);
create index email_events_occurred_at_idx on app.email_events (tenant_id, occurred_at);

create table app.campaign_approvals (
    id              uuid primary key default gen_random_uuid(),
    tenant_id       uuid not null references app.tenants (id) on delete cascade,
    campaign_id     uuid not null,
    approver        text not null,
    approval_role   text,
    status          text not null default 'pending'
                    check (status in ('pending', 'approved', 'rejected')),
    comments        text,
    requested_at    timestamptz not null default now(),
    reviewed_at     timestamptz,
    unique (campaign_id, approver, approval_role),
    foreign key (tenant_id, campaign_id) references app.campaigns (tenant_id, id) on delete cascade
);
"""

#: Every table with a tenant_id; each gets the same isolation policy.
TENANT_TABLES = (
    "sender_accounts",
    "templates",
    "contact_lists",
    "upload_batches",
    "upload_rejects",
    "contacts",
    "contact_list_members",
    "suppressions",
    "campaigns",
    "campaign_settings",
    "campaign_steps",
    "campaign_contacts",
    "sent_emails",
    "email_events",
    "campaign_approvals",
)

#: email_events is append-only for the engine.
APPEND_ONLY = {"email_events"}


def _security(table: str) -> str:
    dml = "select, insert" if table in APPEND_ONLY else "select, insert, update, delete"
    return f"""
alter table app.{table} enable row level security;
alter table app.{table} force row level security;
create policy tenant_isolation on app.{table}
    using (tenant_id = app.current_tenant_id())
    with check (tenant_id = app.current_tenant_id());
create policy analytics_read_all on app.{table} for select to penguin_analytics using (true);
grant {dml} on app.{table} to penguin_app;
"""


GRANTS = """
grant usage on schema app to penguin_app, penguin_analytics;
grant select on app.tenants to penguin_app;
grant select on all tables in schema app to penguin_analytics;
grant usage on all sequences in schema app to penguin_app;
insert into app.tenants (name) values ('default') on conflict (name) do nothing;
"""


def upgrade() -> None:
    op.execute(ROLES)
    op.execute(TABLES)
    for table in TENANT_TABLES:
        op.execute(_security(table))
    op.execute(GRANTS)


def downgrade() -> None:
    for table in reversed(TENANT_TABLES):
        op.execute(f"drop table app.{table}")
    op.execute("drop table app.tenants")
    op.execute("drop function app.current_tenant_id()")
    op.execute("revoke all on schema app from penguin_app, penguin_analytics")
