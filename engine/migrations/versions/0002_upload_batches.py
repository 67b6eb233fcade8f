"""Upload batches say where a file came from, how it was read and what became of each row.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
alter table app.upload_batches
    add column list_name          text,
    add column source             text not null default 'cli'
                                  check (source in ('cli', 'dashboard', 'inbox')),
    add column file_size          bigint,
    -- encoding, delimiter, header, skipped lines: what was assumed in reading the file.
    add column file_format        jsonb not null default '{}'::jsonb,
    add column unchanged_count    integer not null default 0,
    add column suppressed_count   integer not null default 0,
    add column role_address_count integer not null default 0,
    add column list_added_count   integer not null default 0,
    add column attempts           integer not null default 0;
-- total_rows = inserted + updated + unchanged + duplicates + rejected, once completed.
alter table app.upload_batches add constraint upload_batches_counts_add_up check (
    status <> 'completed'
    or total_rows = inserted_count + updated_count + unchanged_count + duplicate_count
                    + rejected_count
);
create index upload_batches_tenant_created_idx on app.upload_batches (tenant_id, created_at);

-- A membership's tenant is its list's and its contact's: the two composite keys already
-- hold it (and cascade from the tenant through the list). The direct key to tenants only
-- cost one more trigger per row, a million of them for a million-row upload.
alter table app.contact_list_members drop constraint contact_list_members_tenant_id_fkey;
"""
    )


def downgrade() -> None:
    op.execute(
        """
alter table app.contact_list_members add constraint contact_list_members_tenant_id_fkey
    foreign key (tenant_id) references app.tenants (id) on delete cascade;
drop index app.upload_batches_tenant_created_idx;
alter table app.upload_batches drop constraint upload_batches_counts_add_up;
alter table app.upload_batches
    drop column list_name, drop column source, drop column file_size, drop column file_format,
    drop column unchanged_count, drop column suppressed_count, drop column role_address_count,
    drop column list_added_count, drop column attempts;
"""
    )
