with source as (
    select * from {{ source('app', 'campaign_settings') }}
),

renamed as (
    select
        campaign_id,
        tenant_id,
        send_window_start,
        send_window_end,
        send_days,
        daily_limit,
        delay_between_emails_seconds,
        stop_on_reply,
        track_opens,
        track_clicks,
        updated_at
    from source
)

select * from renamed
