with campaigns as (
    select * from {{ ref('stg_app__campaigns') }}
),

settings as (
    select * from {{ ref('stg_app__campaign_settings') }}
),

steps as (
    select * from {{ ref('stg_app__campaign_steps') }}
),

tenants as (
    select * from {{ ref('stg_app__tenants') }}
),

step_counts as (
    select
        campaign_id,
        count(*) filter (where removed_at is null) as steps,
        count(*) filter (where removed_at is null and step_type = 'email') as email_steps
    from steps
    group by campaign_id
),

final as (
    select
        campaigns.campaign_id,
        campaigns.tenant_id,
        tenants.tenant_name,
        campaigns.campaign_name,
        campaigns.campaign_status,
        campaigns.campaign_timezone,
        campaigns.created_at,
        campaigns.launched_at,
        campaigns.completed_at,
        settings.send_window_start,
        settings.send_window_end,
        settings.send_days,
        settings.daily_limit,
        settings.stop_on_reply,
        settings.track_opens,
        settings.track_clicks,
        coalesce(step_counts.steps, 0) as steps,
        coalesce(step_counts.email_steps, 0) as email_steps
    from campaigns
    inner join tenants on campaigns.tenant_id = tenants.tenant_id
    left join settings on campaigns.campaign_id = settings.campaign_id
    left join step_counts on campaigns.campaign_id = step_counts.campaign_id
)

select * from final
