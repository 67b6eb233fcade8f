"""Contacts get time-ordered ids and one key index instead of two.

A million-row upload inserts a million contacts. With random (v4) ids every insert lands on
a random page of each id index; with time-ordered (v7) ids they append. And since every
reference to a contact is `(tenant_id, id)`, that unique key becomes the primary key and the
separate index on `id` alone, which nothing used, goes.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

#: (table, constraint, on delete) of every foreign key to app.contacts.
REFERENCES = (
    ("contact_list_members", "contact_list_members_tenant_id_contact_id_fkey", "cascade"),
    ("campaign_contacts", "campaign_contacts_tenant_id_contact_id_fkey", "cascade"),
    ("sent_emails", "sent_emails_tenant_id_contact_id_fkey", "cascade"),
    ("email_events", "email_events_tenant_id_contact_id_fkey", "set null (contact_id)"),
)


def _drop_references() -> str:
    return "\n".join(
        f"alter table app.{table} drop constraint {name};" for table, name, _ in REFERENCES
    )


def _add_references() -> str:
    return "\n".join(
        f"alter table app.{table} add constraint {name} foreign key (tenant_id, contact_id) "
        f"references app.contacts (tenant_id, id) on delete {action};"
        for table, name, action in REFERENCES
    )


def upgrade() -> None:
    op.execute(
        f"""
-- A version 7 UUID (RFC 9562): 48 bits of Unix time in milliseconds, then random bits, so
-- ids made later sort later. PostgreSQL 18 has uuidv7(); this server is 16.
create function app.uuid7() returns uuid
language sql volatile parallel safe
as $$
    select encode(
        set_bit(set_bit(  -- version 7: the high nibble of byte 6 from 0100 to 0111
            overlay(
                uuid_send(gen_random_uuid())
                placing substring(int8send(
                    floor(extract(epoch from clock_timestamp()) * 1000)::bigint) from 3)
                from 1 for 6),
            52, 1), 53, 1),
        'hex')::uuid
$$;
alter table app.contacts alter column id set default app.uuid7();

{_drop_references()}
alter table app.contacts drop constraint contacts_pkey;
alter table app.contacts drop constraint contacts_tenant_id_id_key;
alter table app.contacts add constraint contacts_pkey primary key (tenant_id, id);
{_add_references()}
"""
    )


def downgrade() -> None:
    op.execute(
        f"""
{_drop_references()}
alter table app.contacts drop constraint contacts_pkey;
alter table app.contacts add constraint contacts_pkey primary key (id);
alter table app.contacts add constraint contacts_tenant_id_id_key unique (tenant_id, id);
{_add_references()}
alter table app.contacts alter column id set default gen_random_uuid();
drop function app.uuid7();
"""
    )
