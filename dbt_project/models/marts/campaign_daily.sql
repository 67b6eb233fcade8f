with sends as (
    select * from {{ ref('fct_sends') }}
),

campaigns as (
    select * from {{ ref('stg_app__campaigns') }}
),

tenants as (
    select * from {{ ref('stg_app__tenants') }}
),

daily as (
    select
        tenant_id,
        campaign_id,
        send_date,
        count(*) filter (where send_status = 'sent') as sent_count,
        count(*) filter (where send_status = 'bounced') as bounced_count,
        count(*) filter (where send_status = 'failed') as failed_count,
        count(*) filter (where send_status = 'unknown') as unknown_count,
        count(*) filter (where send_status in ('queued', 'sending')) as pending_count
    from sends
    group by tenant_id, campaign_id, send_date
),

final as (
    select
        {{ surrogate_key(['daily.campaign_id', 'daily.send_date']) }} as campaign_day_id,
        daily.send_date as day,
        daily.tenant_id,
        tenants.tenant_name,
        daily.campaign_id,
        campaigns.campaign_name,
        daily.sent_count,
        daily.bounced_count,
        daily.failed_count,
        daily.unknown_count,
        daily.pending_count,
        case
            when daily.sent_count + daily.bounced_count = 0 then null
            else round(daily.bounced_count::numeric / (daily.sent_count + daily.bounced_count), 4)
        end as bounce_rate
    from daily
    join tenants on tenants.tenant_id = daily.tenant_id
    join campaigns on campaigns.campaign_id = daily.campaign_id
)

select * from final
