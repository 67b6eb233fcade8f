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

{#- The metrics per A/B variant of an email step and send day (`variant` null: a step without
    variants), for the Sequence page's comparisons. -#}

{{ daily_model(
    'step_variant',
    ['campaign_id', 'step_id', 'variant'],
    {
        'stg_app__campaigns': ['campaign_id', 'campaign_name'],
        'stg_app__campaign_steps': ['step_id', 'step_key', 'step_name', 'step_order'],
    }
) }}
