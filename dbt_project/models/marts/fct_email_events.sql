{%- set by_days = var('start_date', none) is not none %}
{{
    config(
        materialized='incremental',
        unique_key='email_event_id',
        incremental_strategy='merge' if by_days else 'append',
        on_schema_change='sync_all_columns',
        tags=['partitioned'],
        indexes=[
            {'columns': ['email_event_id'], 'unique': True},
            {'columns': ['tenant_id', 'event_date']},
            {'columns': ['loaded_at']},
            {'columns': ['recorded_at']},
        ]
    )
}}

{#- One row per engagement event, on the day it happened in its tenant's reporting time zone.
    Incremental on `recorded_at`, reaching back `fct_sends_lookback_hours` (transactions that
    started earlier commit later): the events of that window not here yet are appended (an
    event never changes once recorded, so none is merged, and the unique index on
    `email_event_id` answers "here yet?" for each). With vars `start_date` and `end_date`, every
    event of those event days is merged instead (a backfill repairs what is there). -#}

with events as (
    select events.* from {{ ref('stg_app__email_events') }} as events
    {% if not by_days and is_incremental() %}
    where
        events.recorded_at >= {{ newest(this, 'recorded_at') }}
        - interval '{{ var("fct_sends_lookback_hours") }} hours'
        and not exists (
            select from {{ this }} as loaded
            where loaded.email_event_id = events.email_event_id
        )
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
    {% if by_days %}
    where {{ partition_days("(events.occurred_at at time zone tenants.reporting_timezone)::date") }}
    {% endif %}
)

select * from final
