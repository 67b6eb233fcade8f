with source as (
    select * from {{ source('app', 'campaigns') }}
),

renamed as (
    select
        id as campaign_id,
        tenant_id,
        name as campaign_name,
        status as campaign_status,
        list_id,
        timezone as campaign_timezone,
        launched_at,
        completed_at,
        created_at,
        updated_at
    from source
)

select * from renamed
