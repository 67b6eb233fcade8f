{{
    config(
        materialized='incremental',
        unique_key='sent_email_id',
        incremental_strategy='merge',
        on_schema_change='append_new_columns'
    )
}}

with sent_emails as (
    select * from {{ ref('stg_app__sent_emails') }}
    {% if is_incremental() %}
    -- A message changes status after it is created (sending → sent, queued → failed), so
    -- rows updated since the last run are merged again, not only new ones. updated_at is the
    -- engine's clock for a whole batch and commits land out of order, so the window reaches
    -- back a margin before the newest row already loaded; the merge makes overlap harmless.
    where updated_at >= (
        select coalesce(max(updated_at), '-infinity') from {{ this }}
    ) - interval '{{ var("fct_sends_lookback_hours", 24) }} hours'
    {% endif %}
),

final as (
    select
        sent_email_id,
        tenant_id,
        campaign_id,
        step_id,
        enrollment_id,
        contact_id,
        sender_account_id,
        recipient_email,
        message_id,
        send_status,
        attempts,
        queued_at,
        sent_at,
        (coalesce(sent_at, queued_at) at time zone 'UTC')::date as send_date,
        send_status in ('sent', 'bounced') as was_attempted_delivery,
        updated_at
    from sent_emails
)

select * from final
