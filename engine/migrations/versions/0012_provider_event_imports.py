"""Email service providers' event exports, imported in batches.

`event_imports` is one row per imported file (SES, SendGrid, Mailgun or Postmark webhook
events), with its status and counts, like `upload_batches` for contacts; `event_import_rejects`
holds every record that could not be used, with its line and why. A file's events, effects and
rejects are written in the transaction that completes its batch: nothing of a failed import is
kept, and the same content is not imported twice.

`provider_messages` maps a provider's own message id to our message, learnt from the events
that carry both (a SendGrid `delivered` has the Message-ID and `sg_message_id`; its later
`open` only the latter), so an event that names only the provider's id is matched in a later
file too.

`sent_emails.recipient_key` is the recipient's address lowercased, stored, with the index that
finds an address's messages (a bounce or reply without a reference; an address's soft bounces).
`lower(recipient_email)` could never be that index's condition for the application role: under
row-level security a function that is not leakproof (lower) may not run before the tenant's
policy, so every such lookup read the tenant's whole table.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

SEARCH_PATH = "pg_catalog, app"

TABLES = ("event_imports", "event_import_rejects", "provider_messages")

UPGRADE = """
create table app.event_imports (
    id               uuid not null default app.uuid7(),
    tenant_id        uuid not null references app.tenants (id) on delete cascade,
    provider         text not null check (provider in ('ses', 'sendgrid', 'mailgun', 'postmark')),
    file_name        text not null,
    file_sha256      text not null,
    file_size        bigint not null,
    source           text not null default 'cli' check (source in ('cli', 'inbox')),
    status           text not null default 'pending'
                     check (status in ('pending', 'processing', 'completed', 'failed')),
    total_records    integer not null default 0,
    imported_count   integer not null default 0,
    duplicate_count  integer not null default 0,
    skipped_count    integer not null default 0,
    rejected_count   integer not null default 0,
    unmatched_count  integer not null default 0,
    suppressed_count integer not null default 0,
    -- {event type: events imported}
    event_counts     jsonb not null default '{}'::jsonb,
    error            text,
    created_at       timestamptz not null,
    started_at       timestamptz,
    finished_at      timestamptz,
    primary key (tenant_id, id),
    -- every record is imported, a duplicate, skipped (a type not recorded) or rejected
    constraint event_imports_counts_add_up check (
        status <> 'completed'
        or total_records = imported_count + duplicate_count + skipped_count + rejected_count),
    constraint event_imports_unmatched_are_rejected check (unmatched_count <= rejected_count)
);
create index event_imports_content_idx on app.event_imports (tenant_id, provider, file_sha256);
create index event_imports_created_idx on app.event_imports (tenant_id, created_at);

create table app.event_import_rejects (
    tenant_id   uuid not null,
    import_id   uuid not null,
    -- the record's place in the file (a line of JSON lines may hold an array of several)
    record      integer not null,
    line_number integer not null,
    reason      text not null,
    raw_record  text not null,
    primary key (tenant_id, import_id, record),
    foreign key (tenant_id, import_id)
        references app.event_imports (tenant_id, id) on delete cascade
);

create table app.provider_messages (
    tenant_id           uuid not null,
    provider            text not null,
    provider_message_id text not null,
    sent_email_id       uuid not null,
    primary key (tenant_id, provider, provider_message_id),
    foreign key (tenant_id, sent_email_id)
        references app.sent_emails (tenant_id, id) on delete cascade
);
"""

RECIPIENT_KEY = """
alter table app.sent_emails
    add column recipient_key text generated always as (lower(recipient_email)) stored;
drop index app.sent_emails_recipient_idx;
create index sent_emails_recipient_idx
    on app.sent_emails (tenant_id, recipient_key, queued_at);
"""

SECURITY = """
alter table app.{table} enable row level security;
alter table app.{table} force row level security;
create policy tenant_isolation on app.{table}
    using (tenant_id = app.current_tenant_id())
    with check (tenant_id = app.current_tenant_id());
create policy analytics_read_all on app.{table} for select to penguin_analytics using (true);
grant select on app.{table} to penguin_analytics;
"""

GRANTS = """
grant select, insert, update on app.event_imports to penguin_app;
grant select, insert on app.event_import_rejects to penguin_app;
grant select, insert on app.provider_messages to penguin_app;
"""

DOWNGRADE = """
drop index app.sent_emails_recipient_idx;
alter table app.sent_emails drop column recipient_key;
create index sent_emails_recipient_idx
    on app.sent_emails (tenant_id, lower(recipient_email), queued_at);
drop table app.provider_messages;
drop table app.event_import_rejects;
drop table app.event_imports;
"""


def upgrade() -> None:
    op.execute(f"set local search_path = {SEARCH_PATH}")
    op.execute(UPGRADE)
    op.execute(RECIPIENT_KEY)
    for table in TABLES:
        op.execute(SECURITY.format(table=table))
    op.execute(GRANTS)


def downgrade() -> None:
    op.execute(f"set local search_path = {SEARCH_PATH}")
    op.execute(DOWNGRADE)
