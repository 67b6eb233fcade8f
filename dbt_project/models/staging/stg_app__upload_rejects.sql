with source as (
    select * from {{ source('app', 'upload_rejects') }}
),

renamed as (
    select
        id as upload_reject_id,
        tenant_id,
        batch_id as upload_batch_id,
        line_number,
        reason as reject_reason,
        raw_row
    from source
)

select * from renamed
