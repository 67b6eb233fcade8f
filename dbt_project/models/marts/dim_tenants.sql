{#- A view: a tenant created a moment ago can upload its first list at once. -#}
{{ config(materialized='view') }}

select
    tenant_id,
    tenant_name,
    created_at
from {{ ref('stg_app__tenants') }}
