"""Inbound mail processed once.

`inbound_messages` holds one row per message read from a sender account's mailbox (the local
sink's Maildir, or IMAP), keyed by the mailbox and the message's place in it (a Maildir file
name; UIDVALIDITY and UID). The row is written in the same transaction as the message's event
and effects (a reply, a suppression), so a poll that crashes midway and runs again applies each
message once. Tenant-owned like every table: row-level security, tenant-composite keys.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

SEARCH_PATH = "pg_catalog, app"

UPGRADE = """
create table app.inbound_messages (
    id                uuid not null default app.uuid7(),
    tenant_id         uuid not null references app.tenants (id) on delete cascade,
    mailbox           text not null,
    source_key        text not null,
    message_id        text,
    kind              text not null
                      check (kind in ('reply', 'auto_reply', 'bounce', 'complaint',
                                      'unsubscribe')),
    sender_account_id uuid,
    sent_email_id     uuid,
    from_address      text,
    detail            text,
    received_at       timestamptz not null,
    primary key (tenant_id, id),
    unique (tenant_id, mailbox, source_key),
    foreign key (tenant_id, sender_account_id)
        references app.sender_accounts (tenant_id, id) on delete set null (sender_account_id),
    foreign key (tenant_id, sent_email_id)
        references app.sent_emails (tenant_id, id) on delete set null (sent_email_id)
);
alter table app.inbound_messages enable row level security;
alter table app.inbound_messages force row level security;
create policy tenant_isolation on app.inbound_messages
    using (tenant_id = app.current_tenant_id())
    with check (tenant_id = app.current_tenant_id());
create policy analytics_read_all on app.inbound_messages
    for select to penguin_analytics using (true);
grant select, insert on app.inbound_messages to penguin_app;
grant select on app.inbound_messages to penguin_analytics;
-- A reply or bounce without a usable reference is matched by its address: the latest message
-- of the sender account to it.
create index sent_emails_sender_recipient_idx
    on app.sent_emails (tenant_id, sender_account_id, lower(recipient_email), queued_at);
"""

DOWNGRADE = """
drop index app.sent_emails_sender_recipient_idx;
drop table app.inbound_messages;
"""


def upgrade() -> None:
    op.execute(f"set local search_path = {SEARCH_PATH}")
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(f"set local search_path = {SEARCH_PATH}")
    op.execute(DOWNGRADE)
