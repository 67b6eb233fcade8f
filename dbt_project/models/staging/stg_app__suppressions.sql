with source as (
    select * from {{ source('app', 'suppressions') }}
),

renamed as (
    select
        id as suppression_id,
        tenant_id,
        lower(email) as email,
        split_part(lower(email), '@', 2) as email_domain,
        reason as suppression_reason,
        created_at
    from source
)

select * from renamed
