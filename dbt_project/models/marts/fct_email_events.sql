{%- set by_days = var('start_date', none) is not none %}
{%- set xmin = last_build_xmin() %}
{%- set by_changes = is_incremental() and not by_days and xmin is not none %}
{{
    config(
        materialized='incremental',
        unique_key='email_event_id',
        incremental_strategy='merge',
        on_schema_change='sync_all_columns',
        tags=['partitioned'],
        indexes=[
            {'columns': ['email_event_id'], 'unique': True},
            {'columns': ['tenant_id', 'event_date']},
            {'columns': ['loaded_at']},
            {'columns': ['build_xmin']},
            {'columns': ['recorded_at']},
        ]
    )
}}

{#- One row per engagement event, on the day it happened in its tenant's reporting time zone.
    Incremental in commit order (macros/change_order.sql): each build merges the events written
    by a transaction that had not committed when the previous build read them, whatever their
    `recorded_at` says; merged, not appended, because an event's `machine_reason` may be set
    after it was recorded (migration 0009: a scanner's clicks are known once the last of them
    arrives). With vars `start_date` and `end_date`, every event of those event days is merged
    instead (a backfill repairs what is there), and the watermark stays where it was.
    Indexed on `build_xmin` (the watermark's max()) and on `recorded_at` (the newest event
    recorded, as the freshness benchmark reads it). -#}

with events as (
    select events.* from {{ ref('stg_app__email_events') }} as events
    {% if by_changes %}
    where {{ changed_since('events.change_xid', xmin) }}
    {% endif %}
),

tenants as (
    select * from {{ ref('stg_app__tenants') }}
),

final as (
    select
        events.email_event_id,
        events.tenant_id,
        events.event_type,
        events.sent_email_id,
        events.contact_id,
        events.campaign_id,
        events.step_id,
        events.occurred_at,
        (events.occurred_at at time zone tenants.reporting_timezone)::date as event_date,
        events.recorded_at,
        events.is_machine,
        events.machine_reason,
        events.is_hard_bounce,
        events.clicked_url,
        {{ stored_build_xmin(xmin) }} as build_xmin,
        cast('{{ run_started_at }}' as timestamptz) as loaded_at
    from events
    inner join tenants on events.tenant_id = tenants.tenant_id
    {% if by_days %}
    where {{ partition_days("(events.occurred_at at time zone tenants.reporting_timezone)::date") }}
    {% endif %}
)

select * from final
