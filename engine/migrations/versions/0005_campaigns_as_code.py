"""Campaigns as code: what a YAML campaign file needs stored, and what the full sequence engine
needs to run it.

* **Definitions.** `campaigns.spec` holds the normalized definition last applied (`penguin
  campaign export` prints it back) and `spec_sha256` its fingerprint, which an approval records.
  Steps are keyed by the file's step `id` (`key`), and a re-apply keeps the rows of unchanged keys,
  so enrollments stay where they stand. A removed step is soft-deleted (`removed_at`, no order):
  its messages keep pointing at it.
* **Links, not order.** `next_step_id` (email, wait and action steps) and `true_next_step_id` /
  `false_next_step_id` (conditions) say where an enrollment goes next; NULL is the end. The apply
  resolves implicit order and `next:` jumps into them, so the engine never reads `step_order`.
* **Senders.** A campaign rotates over several sender accounts (`campaign_senders`, in order);
  an email step may name its own (`campaign_steps.sender_account_id`). The single
  `campaigns.sender_account_id` is gone, moved into `campaign_senders`.
* **Waiting.** `campaign_contacts.wait_reason` says why an enrollment's next run lies beyond what
  its step asked for (window, limit, gap, ...), for `penguin campaign status`.
* **A/B tests.** `campaign_steps.variants` holds the variants; `sent_emails.variant` which one a
  message used. A message's `subject` is NULL until it is rendered (its row is written first).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

SEARCH_PATH = "pg_catalog, app"

UPGRADE = """
alter table app.contacts add column tags text[] not null default '{}';

alter table app.campaigns
    add column from_name          text,
    add column reply_to           text,
    add column approval_required  boolean not null default false,
    add column spec               jsonb,
    add column spec_sha256        text;

create table app.campaign_senders (
    tenant_id          uuid not null references app.tenants (id) on delete cascade,
    campaign_id        uuid not null,
    sender_account_id  uuid not null,
    position           smallint not null check (position > 0),
    primary key (tenant_id, campaign_id, sender_account_id),
    unique (tenant_id, campaign_id, position),
    foreign key (tenant_id, campaign_id)
        references app.campaigns (tenant_id, id) on delete cascade,
    -- A sender a campaign rotates over cannot be deleted from under it.
    foreign key (tenant_id, sender_account_id)
        references app.sender_accounts (tenant_id, id) on delete restrict
);
create index campaign_senders_sender_idx on app.campaign_senders (tenant_id, sender_account_id);

insert into app.campaign_senders (tenant_id, campaign_id, sender_account_id, position)
select tenant_id, id, sender_account_id, 1 from app.campaigns
where sender_account_id is not null;
alter table app.campaigns drop column sender_account_id;

alter table app.campaign_settings
    alter column stop_on_reply drop default,
    alter column stop_on_reply type text
        using case when stop_on_reply then 'contact' else 'never' end,
    alter column stop_on_reply set default 'contact',
    add constraint campaign_settings_stop_on_reply_check
        check (stop_on_reply in ('contact', 'company', 'never')),
    alter column send_window_start set default '09:00',
    alter column send_window_end set default '17:00';

alter table app.campaign_steps
    add column key                text,
    add column next_step_id       uuid,
    add column sender_account_id  uuid,
    add column variants           jsonb,
    add column removed_at         timestamptz,
    alter column step_order drop not null,
    drop constraint campaign_steps_check,
    add constraint campaign_steps_email_check check (
        step_type <> 'email' or removed_at is not null or template_id is not null
        or variants is not null or (subject is not null and body_text is not null)),
    add constraint campaign_steps_live_order_check
        check (removed_at is not null or step_order is not null),
    add constraint campaign_steps_variants_check
        check (variants is null or jsonb_typeof(variants) = 'array'),
    add foreign key (tenant_id, next_step_id)
        references app.campaign_steps (tenant_id, id) on delete set null (next_step_id),
    add foreign key (tenant_id, sender_account_id)
        references app.sender_accounts (tenant_id, id) on delete restrict;

-- Steps made before files existed: keyed by their order, linked in order.
update app.campaign_steps set key = step_order::text;
update app.campaign_steps s set next_step_id = n.next_id
from (
    select id, lead(id) over (partition by campaign_id order by step_order) as next_id
    from app.campaign_steps
) n
where n.id = s.id;
alter table app.campaign_steps alter column key set not null;
create unique index campaign_steps_live_key
    on app.campaign_steps (tenant_id, campaign_id, key) where removed_at is null;

alter table app.campaign_contacts
    add column wait_reason text check (wait_reason in (
        'window', 'scheduled', 'campaign limit', 'sender limit', 'sender gap', 'sender paused',
        'retry', 'server down'));
-- The set-based step statements: due enrollments standing on one step.
create index campaign_contacts_step_due_idx on app.campaign_contacts (current_step_id, next_run_at)
    where status in ('enrolled', 'active');

alter table app.sent_emails
    alter column subject drop not null,
    add column variant text;
-- Throttles: a sender's messages today, a campaign's messages today.
create index sent_emails_sender_queued_idx
    on app.sent_emails (tenant_id, sender_account_id, queued_at);
create index sent_emails_campaign_queued_idx on app.sent_emails (tenant_id, campaign_id, queued_at);

alter table app.campaign_approvals add column spec_sha256 text;

-- Conditions on engagement: this campaign's events of one contact.
create index email_events_campaign_contact_idx
    on app.email_events (tenant_id, campaign_id, contact_id, event_type);

alter table app.campaign_senders enable row level security;
alter table app.campaign_senders force row level security;
create policy tenant_isolation on app.campaign_senders
    using (tenant_id = (select app.current_tenant_id()))
    with check (tenant_id = (select app.current_tenant_id()));
create policy analytics_read_all on app.campaign_senders for select to penguin_analytics
    using (true);
grant select, insert, update, delete on app.campaign_senders to penguin_app;
grant select on app.campaign_senders to penguin_analytics;
"""

DOWNGRADE = """
drop index app.email_events_campaign_contact_idx;
alter table app.campaign_approvals drop column spec_sha256;
drop index app.sent_emails_campaign_queued_idx;
drop index app.sent_emails_sender_queued_idx;
delete from app.sent_emails where subject is null;
alter table app.sent_emails drop column variant, alter column subject set not null;
drop index app.campaign_contacts_step_due_idx;
alter table app.campaign_contacts drop column wait_reason;
delete from app.campaign_steps where removed_at is not null;
drop index app.campaign_steps_live_key;
alter table app.campaign_steps
    drop constraint campaign_steps_variants_check,
    drop constraint campaign_steps_live_order_check,
    drop constraint campaign_steps_email_check,
    drop column key, drop column next_step_id, drop column sender_account_id,
    drop column variants, drop column removed_at,
    alter column step_order set not null,
    add constraint campaign_steps_check check (step_type <> 'email' or template_id is not null
        or (subject is not null and body_text is not null));
alter table app.campaign_settings
    drop constraint campaign_settings_stop_on_reply_check,
    alter column stop_on_reply drop default,
    alter column stop_on_reply type boolean using stop_on_reply <> 'never',
    alter column stop_on_reply set default true,
    alter column send_window_start set default '09:00',
    alter column send_window_end set default '18:00';
alter table app.campaigns add column sender_account_id uuid,
    add foreign key (tenant_id, sender_account_id)
        references app.sender_accounts (tenant_id, id) on delete set null (sender_account_id);
update app.campaigns c set sender_account_id = s.sender_account_id
from app.campaign_senders s where s.campaign_id = c.id and s.position = 1;
drop table app.campaign_senders;
alter table app.campaigns
    drop column from_name, drop column reply_to, drop column approval_required,
    drop column spec, drop column spec_sha256;
alter table app.contacts drop column tags;
"""


def upgrade() -> None:
    op.execute(f"set local search_path = {SEARCH_PATH}")
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(f"set local search_path = {SEARCH_PATH}")
    op.execute(DOWNGRADE)
