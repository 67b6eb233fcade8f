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
    'step',
    ['campaign_id', 'step_id'],
    {
        'stg_app__campaigns': ['campaign_id', 'campaign_name'],
        'stg_app__campaign_steps': ['step_id', 'step_key', 'step_name', 'step_order'],
    }
) }}
