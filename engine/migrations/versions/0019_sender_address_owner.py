"""A sender address belongs to one tenant.

Inbound mail is given to the tenant whose sender account it is addressed to
(`engine.mailboxes`): while two tenants could register the same address, the second read the
first's replies (subjects and bodies) and the first's unsubscribe emails suppressed the
second's contacts. A unique index on the normalized address across tenants makes the database
refuse the second registration, so two concurrent `penguin sender add` cannot both win
(`engine.senders.create_sender` turns the violation into a message that names the fix and not
the tenant holding the address).

Existing duplicates: the account created first (then the smaller id) keeps the address. Every
later one is kept, with its messages and history, but marked `address_revoked_at` and paused:
it sends nothing, reads no mail (the mailbox readers skip it) and cannot be resumed (a check
constraint), and the index leaves it out. Its tenant re-adding the address is refused while
the first account holds it.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-08
"""

from __future__ import annotations

from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

UPGRADE = """
alter table app.sender_accounts add column address_revoked_at timestamptz;
comment on column app.sender_accounts.address_revoked_at is
    'Set by migration 0019 on an account whose address another tenant registered first: it '
    'neither sends nor reads mail, and the address belongs to the first account.';

-- The owner is subject to the table's forced row-level security: lifted for this one
-- statement, inside the migration's transaction.
alter table app.sender_accounts no force row level security;
update app.sender_accounts s
set address_revoked_at = now(), is_active = false, updated_at = now()
where exists (
    select from app.sender_accounts first
    where lower(first.email) = lower(s.email) and first.tenant_id <> s.tenant_id
      and (first.created_at, first.id) < (s.created_at, s.id)
);
alter table app.sender_accounts force row level security;

alter table app.sender_accounts add constraint sender_accounts_revoked_inactive
    check (address_revoked_at is null or not is_active);
create unique index sender_accounts_address_key on app.sender_accounts (lower(email))
    where address_revoked_at is null;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(
        """
        drop index app.sender_accounts_address_key;
        alter table app.sender_accounts drop constraint sender_accounts_revoked_inactive,
                                        drop column address_revoked_at;
        """
    )
