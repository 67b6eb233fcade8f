{#- A view, not a table: the upload page follows a batch from pending to completed while the
    ingestion runs, so it must see the batch as it is now, not as of the last dbt build. A
    tenant has one row per uploaded file, so reading it live stays cheap. -#}
{{ config(materialized='view') }}

with batches as (
    select * from {{ ref('stg_app__upload_batches') }}
),

tenants as (
    select * from {{ ref('stg_app__tenants') }}
),

final as (
    select
        batches.upload_batch_id,
        batches.tenant_id,
        tenants.tenant_name,
        batches.list_name,
        batches.file_name,
        batches.file_size_bytes,
        batches.upload_source,
        batches.upload_status,
        batches.upload_error,
        batches.total_rows,
        batches.inserted_count,
        batches.updated_count,
        batches.unchanged_count,
        batches.duplicate_count,
        batches.rejected_count,
        batches.suppressed_count,
        batches.role_address_count,
        batches.list_added_count,
        batches.attempts,
        batches.file_format ->> 'encoding' as file_encoding,
        batches.file_format ->> 'delimiter' as file_delimiter,
        batches.column_mapping::text as column_mapping,
        batches.created_at,
        batches.started_at,
        batches.finished_at,
        extract(epoch from batches.finished_at - batches.started_at) as duration_seconds
    from batches
    inner join tenants on batches.tenant_id = tenants.tenant_id
)

select * from final
