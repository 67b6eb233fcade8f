with senders as (
    select * from {{ ref('stg_app__sender_accounts') }}
),

tenants as (
    select * from {{ ref('stg_app__tenants') }}
),

final as (
    select
        senders.sender_account_id,
        senders.tenant_id,
        tenants.tenant_name,
        senders.sender_email,
        senders.sender_name,
        senders.daily_limit,
        senders.min_gap_seconds,
        senders.is_active,
        senders.created_at
    from senders
    inner join tenants on senders.tenant_id = tenants.tenant_id
)

select * from final
