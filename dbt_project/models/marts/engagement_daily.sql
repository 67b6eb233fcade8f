{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key=['tenant_id', 'event_date'],
        on_schema_change='sync_all_columns',
        tags=['partitioned'],
        indexes=[{'columns': ['tenant_id', 'event_date']}]
    )
}}

{#- Activity volume: events per campaign and the day they happened (not the day their message
    was sent). Rebuilds whole event days: those of the events merged since its last build, or
    the vars' `start_date`..`end_date`. -#}

with events as (
    select * from {{ ref('fct_email_events') }}
),

tenants as (
    select * from {{ ref('stg_app__tenants') }}
),

daily as (
    select
        event_date,
        tenant_id,
        campaign_id,
        event_type,
        count(*) as events,
        count(*) filter (where not is_machine) as human_events,
        count(*) filter (where is_machine) as machine_events,
        count(distinct sent_email_id) as messages
    from events
    where {{ days_to_build('event_date', 'fct_email_events') }}
    group by event_date, tenant_id, campaign_id, event_type
),

final as (
    select
        {{ surrogate_key(
            ['daily.event_date', 'daily.tenant_id', 'daily.campaign_id', 'daily.event_type']
        ) }} as engagement_day_id,
        daily.event_date,
        daily.tenant_id,
        tenants.tenant_name,
        daily.campaign_id,
        daily.event_type,
        daily.events,
        daily.human_events,
        daily.machine_events,
        daily.messages,
        cast('{{ run_started_at }}' as timestamptz) as loaded_at
    from daily
    inner join tenants on daily.tenant_id = tenants.tenant_id
)

select * from final
