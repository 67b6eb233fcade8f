{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key='send_date',
        on_schema_change='sync_all_columns',
        tags=['daily']
    )
}}

{{ daily_model('recipient_domain', ['recipient_domain'], {}) }}
