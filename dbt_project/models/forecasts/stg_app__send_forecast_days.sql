with source as (
    select * from {{ source('app', 'send_forecast_days') }}
),

renamed as (
    select
        tenant_id,
        campaign_id,
        day as forecast_day,
        step_key,
        messages
    from source
)

select * from renamed
