{#- A view: rejects are written with their batch, and the upload page offers them for
    download as soon as the batch completes, before any dbt build. -#}
{{ config(materialized='view') }}

with rejects as (
    select * from {{ ref('stg_app__upload_rejects') }}
),

batches as (
    select * from {{ ref('fct_upload_batches') }}
),

final as (
    select
        rejects.upload_reject_id,
        rejects.upload_batch_id,
        batches.tenant_name,
        batches.file_name,
        rejects.line_number,
        rejects.reject_reason,
        rejects.raw_row
    from rejects
    inner join batches on rejects.upload_batch_id = batches.upload_batch_id
)

select * from final
