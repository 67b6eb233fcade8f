{{
    config(
        indexes=[{'columns': ['tenant_id', 'campaign_id']}]
    )
}}

{#- Why enrollments left each step early: one row per step and exit reason, from the engine's
    step history. -#}

with transitions as (
    select * from {{ ref('stg_app__step_transitions') }}
),

steps as (
    select * from {{ ref('stg_app__campaign_steps') }}
),

exits as (
    select
        from_step_id as step_id,
        coalesce(exit_reason, 'unknown') as exit_reason,
        count(*) as exited,
        min(occurred_at) as first_exit_at,
        max(occurred_at) as last_exit_at
    from transitions
    where transition_outcome = 'exited'
    group by from_step_id, coalesce(exit_reason, 'unknown')
),

final as (
    select
        {{ surrogate_key(['exits.step_id', 'exits.exit_reason']) }} as step_exit_id,
        steps.tenant_id,
        steps.campaign_id,
        exits.step_id,
        steps.step_key,
        steps.step_order,
        exits.exit_reason,
        exits.exited,
        exits.first_exit_at,
        exits.last_exit_at
    from exits
    inner join steps on exits.step_id = steps.step_id
)

select * from final
