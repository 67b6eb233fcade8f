"""Sender accounts' IMAP mailboxes, and where reading each one got to.

A sender account may name an IMAP mailbox (host, port, security, user, the environment variable
holding its password, folder) where its replies and bounces arrive. `mailbox_cursors` keeps,
per account, the folder's UIDVALIDITY and the last UID applied, updated in the transaction of
each message applied (with its `inbound_messages` row, keyed `UIDVALIDITY:UID`): a poll that
stops midway resumes after the last message it applied, and a folder whose UIDVALIDITY changed
is read again from its start, each message still applied once (by its Message-ID).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

SEARCH_PATH = "pg_catalog, app"

UPGRADE = """
alter table app.sender_accounts
    add column imap_host text,
    add column imap_port integer check (imap_port between 1 and 65535),
    add column imap_security text not null default 'tls'
        check (imap_security in ('none', 'starttls', 'tls')),
    add column imap_username text,
    add column imap_password_env text,
    add column imap_folder text not null default 'INBOX';

create table app.mailbox_cursors (
    tenant_id         uuid not null references app.tenants (id) on delete cascade,
    sender_account_id uuid not null,
    uidvalidity       bigint not null,
    last_uid          bigint not null,
    updated_at        timestamptz not null,
    primary key (tenant_id, sender_account_id),
    foreign key (tenant_id, sender_account_id)
        references app.sender_accounts (tenant_id, id) on delete cascade
);
alter table app.mailbox_cursors enable row level security;
alter table app.mailbox_cursors force row level security;
create policy tenant_isolation on app.mailbox_cursors
    using (tenant_id = app.current_tenant_id())
    with check (tenant_id = app.current_tenant_id());
create policy analytics_read_all on app.mailbox_cursors
    for select to penguin_analytics using (true);
grant select, insert, update on app.mailbox_cursors to penguin_app;
grant select on app.mailbox_cursors to penguin_analytics;

-- A message read again under another key (its folder recreated with a new UIDVALIDITY, or
-- copied between folders) is the same message: applied once.
create unique index inbound_messages_message_id_key
    on app.inbound_messages (tenant_id, mailbox, message_id) where message_id is not null;

-- Messages to an address, whichever sender sent them: a reply or bounce without a reference is
-- matched by it, and an address's soft bounces are counted by it (0010's index, which led with
-- the sender, could serve only the first).
drop index app.sent_emails_sender_recipient_idx;
create index sent_emails_recipient_idx
    on app.sent_emails (tenant_id, lower(recipient_email), queued_at);
"""

DOWNGRADE = """
drop index app.sent_emails_recipient_idx;
create index sent_emails_sender_recipient_idx
    on app.sent_emails (tenant_id, sender_account_id, lower(recipient_email), queued_at);
drop index app.inbound_messages_message_id_key;
drop table app.mailbox_cursors;
alter table app.sender_accounts
    drop column imap_folder,
    drop column imap_password_env,
    drop column imap_username,
    drop column imap_security,
    drop column imap_port,
    drop column imap_host;
"""


def upgrade() -> None:
    op.execute(f"set local search_path = {SEARCH_PATH}")
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(f"set local search_path = {SEARCH_PATH}")
    op.execute(DOWNGRADE)
