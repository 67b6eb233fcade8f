with steps as (
    select * from {{ ref('stg_app__campaign_steps') }}
),

campaigns as (
    select * from {{ ref('stg_app__campaigns') }}
),

final as (
    select
        steps.step_id,
        steps.tenant_id,
        steps.campaign_id,
        campaigns.campaign_name,
        steps.step_key,
        steps.step_order,
        steps.step_name,
        steps.step_type,
        steps.step_subject,
        steps.wait_duration,
        steps.has_variants,
        steps.removed_at is not null as is_removed
    from steps
    inner join campaigns on steps.campaign_id = campaigns.campaign_id
)

select * from final
