with source as (
    select * from {{ source('app', 'contacts') }}
),

renamed as (
    select
        id as contact_id,
        tenant_id,
        lower(email) as email,
        split_part(lower(email), '@', 2) as email_domain,
        first_name,
        last_name,
        company,
        job_title,
        country,
        lead_score,
        is_role_address,
        status as contact_status,
        tags,
        created_at,
        updated_at,
        change_xid
    from source
)

select * from renamed
