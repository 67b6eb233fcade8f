with source as (
    select * from {{ source('app', 'tenants') }}
),

renamed as (
    select
        id as tenant_id,
        name as tenant_name,
        reporting_timezone,
        created_at
    from source
)

select * from renamed
