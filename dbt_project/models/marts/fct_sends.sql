{%- set by_days = var('start_date', none) is not none %}
{%- set xmin = last_build_xmin() %}
{#- An incremental build of what changed since the last one (macros/change_order.sql); a first
    build, a full refresh or a day range builds its rows from all of the sources. -#}
{%- set by_changes = is_incremental() and not by_days and xmin is not none %}
{{
    config(
        materialized='incremental',
        unique_key='sent_email_id',
        incremental_strategy='merge',
        on_schema_change='sync_all_columns',
        tags=['partitioned'],
        pre_hook="set local enable_nestloop = {{
            'on' if is_incremental() and var('start_date', none) is none
                and last_build_xmin() is not none else 'off' }}",
        indexes=[
            {'columns': ['sent_email_id'], 'unique': True},
            {'columns': ['tenant_id', 'send_date']},
            {'columns': ['tenant_id', 'contact_id']},
            {'columns': ['loaded_at']},
            {'columns': ['build_xmin']},
            {'columns': ['updated_at']},
            {'columns': ['last_event_recorded_at']},
        ]
    )
}}

{#- One row per message, with what became of it. Incremental: each build merges the messages
    written, or given an event, by a transaction that had not committed when the previous build
    read them (`change_xid`, in commit order: macros/change_order.sql), recomputing their
    outcomes from all of their events, so a late open (weeks after the send) reaches its message
    and its send day, and a row stamped with any time (a writer's future `now`, a back-dated
    generator, a host whose clock is behind) is found all the same. With vars `start_date` and
    `end_date` (a Dagster partition range: a backfill, the nightly repair) it recomputes every
    message of those send days instead, and leaves the watermark where it was. -#}

{#- Indexed on what incremental builds look up: `sent_email_id` (the merge's key, unique), the
    watermark's max() (`build_xmin`), `loaded_at` (the rows a build wrote: the daily models'
    days to rebuild, the data tests' rows), (tenant_id, send_date) (the rows of a day the daily
    models rebuild) and (tenant_id, contact_id) (a changed contact's messages, for
    dim_contacts); and on the newest `updated_at` and `last_event_recorded_at`, which the
    dashboards show as "data as of". -#}

{#- The import CTEs are inlined (`not materialized`): each is read twice on an incremental
    build, and a materialized CTE has no statistics, which once planned a nested loop over all
    messages times all events (50 s for 30,000 messages). A full build or a day range joins by
    hash, whatever the statistics say: on tables just written (a big send or import, not
    analyzed yet) the planner took the few rows it expected for a nested loop over them all. An
    incremental build, the few thousand messages that changed, looks each one up by index (its
    events, its row here), which only a nested loop does. -#}
with sent_emails as not materialized (
    select * from {{ ref('stg_app__sent_emails') }}
),

events as not materialized (
    select * from {{ ref('stg_app__email_events') }}
),

tenants as not materialized (
    select * from {{ ref('stg_app__tenants') }}
),

{% if by_days %}
changed as (
    select
        sent_emails.tenant_id,
        sent_emails.sent_email_id
    from sent_emails
    inner join tenants on sent_emails.tenant_id = tenants.tenant_id
    where {{ partition_days(
        "(coalesce(sent_emails.sent_at, sent_emails.queued_at)"
        ~ " at time zone tenants.reporting_timezone)::date"
    ) }}
),
{% elif by_changes %}
changed as (
    select
        sent_emails.tenant_id,
        sent_emails.sent_email_id
    from sent_emails
    where {{ changed_since('sent_emails.change_xid', xmin) }}
    union
    select
        events.tenant_id,
        events.sent_email_id
    from events
    where
        events.sent_email_id is not null
        and {{ changed_since('events.change_xid', xmin) }}
),
{% endif %}

{#- Each message's outcomes from all of its events. An incremental build looks up the changed
    messages' events one message at a time, by the app's (sent_email_id, event_type) index (a
    few hundred thousand index entries, not a scan of every event); a full build or a day range
    aggregates all events in one pass. -#}
{%- set outcome_columns %}
bool_or(events.event_type = 'delivered') as has_delivered_event,
bool_or(events.event_type = 'bounce' and events.is_hard_bounce) as has_hard_bounce,
bool_or(events.event_type = 'bounce' and not events.is_hard_bounce) as has_soft_bounce,
min(events.occurred_at) filter (
    where events.event_type = 'open' and not events.is_machine
) as first_open_at,
count(*) filter (where events.event_type = 'open' and not events.is_machine) as human_opens,
count(*) filter (where events.event_type = 'open' and events.is_machine) as machine_opens,
min(events.occurred_at) filter (
    where events.event_type = 'click' and not events.is_machine
) as first_click_at,
count(*) filter (
    where events.event_type = 'click' and not events.is_machine
) as human_clicks,
count(*) filter (where events.event_type = 'click' and events.is_machine) as machine_clicks,
min(events.occurred_at) filter (where events.event_type = 'reply') as first_reply_at,
bool_or(events.event_type = 'auto_reply') as is_auto_replied,
bool_or(events.event_type = 'unsubscribe') as is_unsubscribed,
bool_or(events.event_type = 'complaint') as is_complained,
max(events.recorded_at) as last_event_recorded_at
{%- endset %}
outcomes as (
    {% if by_changes %}
    select
        changed.sent_email_id,
        per_message.*
    from changed
    cross join
        lateral (
            select
                {{ outcome_columns | trim | indent(16) }}
            from events
            where events.sent_email_id = changed.sent_email_id
        ) as per_message
    {% else %}
    select
        events.sent_email_id,
        {{ outcome_columns | trim | indent(8) }}
    from events
    {% if by_days %}
    inner join changed on events.sent_email_id = changed.sent_email_id
    {% endif %}
    where events.sent_email_id is not null
    group by events.sent_email_id
    {% endif %}
),

{# The messages to build. An incremental build looks each changed one up by its key, in a
    lateral: PostgreSQL does not flatten a view written with CTEs (the staging views) into the
    query that reads it, so a join with it would scan every message to find a few thousand. -#}
in_scope as (
    {% if by_changes %}
    select looked_up.*
    from changed
    cross join
        lateral (
            select sent_emails.*
            from sent_emails
            where
                sent_emails.tenant_id = changed.tenant_id
                and sent_emails.sent_email_id = changed.sent_email_id
            -- the key's one row; the limit also keeps the planner from flattening the lateral
            -- into the join it would then plan with a scan
            order by sent_emails.sent_email_id
            limit 1
        ) as looked_up
    {% else %}
    select sent_emails.*
    from sent_emails
    {% if by_days %}
    where
        (sent_emails.tenant_id, sent_emails.sent_email_id) in (
            select
                changed.tenant_id,
                changed.sent_email_id
            from changed
        )
    {% endif %}
    {% endif %}
),

messages as (
    select
        sent_emails.*,
        tenants.reporting_timezone,
        -- a human open or click, a reply, an unsubscribe or a complaint: the recipient acted on
        -- the message, which proves it went out and arrived (metrics.md, "Outcomes")
        coalesce(
            outcomes.human_opens > 0
            or outcomes.human_clicks > 0
            or outcomes.first_reply_at is not null
            or outcomes.is_unsubscribed
            or outcomes.is_complained,
            false
        ) as is_engaged,
        coalesce(outcomes.has_delivered_event, false) as has_delivered_event,
        coalesce(outcomes.has_hard_bounce, false) as has_hard_bounce,
        coalesce(outcomes.has_soft_bounce, false) as has_soft_bounce,
        outcomes.first_open_at,
        coalesce(outcomes.human_opens, 0) as human_opens,
        coalesce(outcomes.machine_opens, 0) as machine_opens,
        outcomes.first_click_at,
        coalesce(outcomes.human_clicks, 0) as human_clicks,
        coalesce(outcomes.machine_clicks, 0) as machine_clicks,
        outcomes.first_reply_at,
        coalesce(outcomes.is_auto_replied, false) as is_auto_replied,
        coalesce(outcomes.is_unsubscribed, false) as is_unsubscribed,
        coalesce(outcomes.is_complained, false) as is_complained,
        outcomes.last_event_recorded_at
    from in_scope as sent_emails
    inner join tenants on sent_emails.tenant_id = tenants.tenant_id
    left join outcomes on sent_emails.sent_email_id = outcomes.sent_email_id
),

final as (
    select
        sent_email_id,
        tenant_id,
        campaign_id,
        step_id,
        enrollment_id,
        contact_id,
        sender_account_id,
        recipient_email,
        recipient_domain,
        message_id,
        variant,
        send_status,
        attempts,
        queued_at,
        sent_at,
        (coalesce(sent_at, queued_at) at time zone reporting_timezone)::date as send_date,
        -- the server's verdict ended the SMTP conversation, or the recipient acted on the
        -- message, whatever its status says (`unknown` after a crash included)
        send_status in ('sent', 'bounced') or is_engaged as is_sent,
        -- refused with a 5xx at RCPT (status bounced, with or without a bounce event since),
        -- or a hard bounce event; never a message the recipient acted on, whatever bounce
        -- reports say (the engine still suppresses the address: its rule, not the metric's)
        send_status in ('sent', 'bounced') and not is_engaged
        and (send_status = 'bounced' or has_hard_bounce) as is_bounced_hard,
        send_status = 'sent' and not is_engaged and has_soft_bounce and not has_hard_bounce
            as is_bounced_soft,
        is_engaged
        or (send_status = 'sent' and not has_hard_bounce and not has_soft_bounce)
            as is_delivered,
        has_delivered_event,
        first_open_at,
        human_opens,
        machine_opens,
        human_opens > 0 as is_opened,
        first_click_at,
        human_clicks,
        machine_clicks,
        human_clicks > 0 as is_clicked,
        first_reply_at,
        first_reply_at is not null as is_replied,
        is_auto_replied,
        is_unsubscribed,
        is_complained,
        updated_at,
        last_event_recorded_at,
        {{ stored_build_xmin(xmin) }} as build_xmin,
        cast('{{ run_started_at }}' as timestamptz) as loaded_at
    from messages
)

select * from final
