{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key=['tenant_id', 'send_date'],
        on_schema_change='sync_all_columns',
        tags=['partitioned'],
        indexes=[{'columns': ['tenant_id', 'send_date']}]
    )
}}

{{ daily_model(
    'campaign',
    ['campaign_id'],
    {'stg_app__campaigns': ['campaign_id', 'campaign_name']}
) }}
