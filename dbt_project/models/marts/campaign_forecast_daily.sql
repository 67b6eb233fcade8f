{{
    config(
        indexes=[{'columns': ['tenant_id', 'campaign_id']}]
    )
}}

{#- The messages each campaign is forecast to send per campaign-local day and email step, with
    the step's place in the sequence (a step removed since the forecast keeps its key). -#}

with forecast_days as (
    select * from {{ ref('stg_app__send_forecast_days') }}
),

steps as (
    select * from {{ ref('stg_app__campaign_steps') }}
    where removed_at is null
)

select
    {{ surrogate_key(['forecast_days.campaign_id', 'forecast_days.forecast_day',
        'forecast_days.step_key']) }} as forecast_day_id,
    forecast_days.tenant_id,
    forecast_days.campaign_id,
    forecast_days.forecast_day,
    forecast_days.step_key,
    steps.step_id,
    steps.step_order,
    forecast_days.messages
from forecast_days
left join steps
    on
        forecast_days.campaign_id = steps.campaign_id
        and forecast_days.step_key = steps.step_key
