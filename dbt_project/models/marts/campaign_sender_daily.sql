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

{#- The metrics per send day, campaign and sender: what the dashboards sum when both a
    campaign and a sender filter apply (neither campaign_daily nor sender_daily can answer
    "campaign X through sender Y"). -#}

{{ daily_model(
    'campaign_sender',
    ['campaign_id', 'sender_account_id'],
    {
        'stg_app__campaigns': ['campaign_id', 'campaign_name'],
        'stg_app__sender_accounts': ['sender_account_id', 'sender_email'],
    }
) }}
