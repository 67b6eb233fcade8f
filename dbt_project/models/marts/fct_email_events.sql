{{
    config(
        materialized='incremental',
        unique_key='email_event_id',
        incremental_strategy='merge',
        on_schema_change='sync_all_columns',
        tags=['partitioned'],
        indexes=[{'columns': ['loaded_at']}, {'columns': ['recorded_at']}]
    )
}}

{#- One row per engagement event, on the day it happened in its tenant's reporting time zone.
    Incremental on `recorded_at`, reaching back `fct_sends_lookback_hours` (transactions that
    started earlier commit later). With vars `start_date` and `end_date`, every event of those
    event days instead. -#}

with events as (
    select * from {{ ref('stg_app__email_events') }}
    {% if var('start_date', none) is none and is_incremental() %}
    where recorded_at >= (
            select coalesce(max(loaded.recorded_at), '-infinity') from {{ this }} as loaded
        ) - interval '{{ var("fct_sends_lookback_hours", 24) }} hours'
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
        cast('{{ run_started_at }}' as timestamptz) as loaded_at
    from events
    inner join tenants on events.tenant_id = tenants.tenant_id
    {% if var('start_date', none) is not none %}
    where {{ partition_days("(events.occurred_at at time zone tenants.reporting_timezone)::date") }}
    {% endif %}
)

select * from final
