{{
    config(
        indexes=[{'columns': ['tenant_id', 'campaign_id']}]
    )
}}

{#- One row per campaign: its send forecast as the last analytics run simulated it (the engine's
    own passes, no engagement from then on; engine.forecasts), the messages it forecasts over
    the window, and why it could not be forecast when it could not. -#}

with forecasts as (
    select * from {{ ref('stg_app__send_forecasts') }}
),

forecast_days as (
    select * from {{ ref('stg_app__send_forecast_days') }}
),

campaigns as (
    select * from {{ ref('stg_app__campaigns') }}
),

totals as (
    select
        campaign_id,
        min(forecast_day) as first_day,
        max(forecast_day) as last_day,
        sum(messages) as forecast_messages
    from forecast_days
    group by campaign_id
)

select
    forecasts.tenant_id,
    forecasts.campaign_id,
    campaigns.campaign_name,
    forecasts.forecast_at,
    forecasts.forecast_timezone,
    forecasts.forecast_days,
    totals.first_day,
    totals.last_day,
    coalesce(totals.forecast_messages, 0) as forecast_messages,
    forecasts.last_message_day,
    forecasts.messages_later,
    forecasts.enrollments_unfinished,
    forecasts.forecast_summary,
    forecasts.forecast_notes,
    forecasts.forecast_error
from forecasts
inner join campaigns on forecasts.campaign_id = campaigns.campaign_id
left join totals on forecasts.campaign_id = totals.campaign_id
