with source as (
    select * from {{ source('app', 'send_forecasts') }}
),

renamed as (
    select
        tenant_id,
        campaign_id,
        forecast_at,
        timezone as forecast_timezone,
        days as forecast_days,
        last_day as last_message_day,
        later as messages_later,
        unfinished as enrollments_unfinished,
        summary as forecast_summary,
        notes as forecast_notes,
        error as forecast_error
    from source
)

select * from renamed
