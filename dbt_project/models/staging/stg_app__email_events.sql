with source as (
    select * from {{ source('app', 'email_events') }}
),

renamed as (
    select
        id as email_event_id,
        tenant_id,
        event_type,
        sent_email_id,
        contact_id,
        campaign_id,
        step_id,
        occurred_at,
        recorded_at,
        is_machine,
        machine_reason,
        -- a bounce's class, as the engine decided it (hard: permanent, or the third soft
        -- bounce of the address within 7 days)
        case when event_type = 'bounce' then coalesce((payload ->> 'hard')::boolean, false) end
            as is_hard_bounce,
        payload ->> 'url' as clicked_url,
        change_xid
    from source
)

select * from renamed
