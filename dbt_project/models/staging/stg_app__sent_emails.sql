with source as (
    select * from {{ source('app', 'sent_emails') }}
),

renamed as (
    select
        id as sent_email_id,
        tenant_id,
        campaign_id,
        step_id,
        campaign_contact_id as enrollment_id,
        contact_id,
        sender_account_id,
        lower(recipient_email) as recipient_email,
        split_part(lower(recipient_email), '@', 2) as recipient_domain,
        message_id,
        variant,
        status as send_status,
        attempts,
        queued_at,
        sent_at,
        updated_at,
        change_xid
    from source
)

select * from renamed
