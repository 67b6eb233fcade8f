"""Enrollment: every member of an active campaign's list gets one `campaign_contacts` row."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

# Set-based and idempotent: contacts already enrolled are left alone (unique per campaign),
# suppressed addresses and contacts that are no longer active are never enrolled.
_ENROLL = sa.text(
    """
    with enrolled as (
        insert into app.campaign_contacts
            (tenant_id, campaign_id, contact_id, status, current_step_id, next_run_at,
             enrolled_at, updated_at)
        select c.tenant_id, c.id, ct.id, 'enrolled', first_step.id,
               greatest(:now, coalesce(c.start_at, :now)), :now, :now
        from app.campaigns c
        join app.contact_list_members m on m.list_id = c.list_id
        join app.contacts ct on ct.id = m.contact_id and ct.status = 'active'
        cross join lateral (
            select s.id from app.campaign_steps s
            where s.campaign_id = c.id and s.removed_at is null order by s.step_order limit 1
        ) first_step
        where c.status = 'active'
          and not exists (
              select from app.suppressions sup
              where sup.tenant_id = ct.tenant_id and lower(sup.email) = lower(ct.email)
          )
        on conflict (tenant_id, campaign_id, contact_id) do nothing
        returning campaign_id
    )
    select c.name as campaign, count(*) as enrolled
    from enrolled e join app.campaigns c on c.id = e.campaign_id
    group by c.name order by c.name
    """
)


def enroll_active_campaigns(conn: Connection, now: datetime) -> dict[str, int]:
    """Enroll new list members into the tenant's active campaigns; count per campaign."""
    return {row.campaign: row.enrolled for row in conn.execute(_ENROLL, {"now": now})}
