with source as (
    select * from {{ source('app', 'sender_accounts') }}
),

renamed as (
    select
        id as sender_account_id,
        tenant_id,
        lower(email) as sender_email,
        display_name as sender_name,
        daily_limit,
        min_gap_seconds,
        is_active,
        created_at,
        updated_at
    from source
)

select * from renamed
