with source as (
    select * from {{ source('app', 'upload_batches') }}
),

renamed as (
    select
        id as upload_batch_id,
        tenant_id,
        list_id,
        list_name,
        file_name,
        file_size as file_size_bytes,
        content_sha256,
        source as upload_source,
        status as upload_status,
        error as upload_error,
        column_mapping,
        file_format,
        total_rows,
        inserted_count,
        updated_count,
        unchanged_count,
        duplicate_count,
        rejected_count,
        suppressed_count,
        role_address_count,
        list_added_count,
        attempts,
        created_at,
        started_at,
        finished_at
    from source
)

select * from renamed
