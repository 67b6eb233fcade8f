{{
    config(
        indexes=[{'columns': ['tenant_id', 'campaign_id']}]
    )
}}

{#- One row per step of every campaign: how many enrollments reached it, went on, took each
    branch of a condition, left (exited) or still stand on it, and what its messages did. From
    the engine's step history (app.step_transitions) and fct_sends; over the campaign's whole
    life, rebuilt whole (a few rows per enrollment, grouped once). -#}

with transitions as (
    select * from {{ ref('stg_app__step_transitions') }}
),

steps as (
    select * from {{ ref('stg_app__campaign_steps') }}
),

campaigns as (
    select * from {{ ref('stg_app__campaigns') }}
),

tenants as (
    select * from {{ ref('stg_app__tenants') }}
),

sends as (
    select * from {{ ref('fct_sends') }}
),

reached as (
    select
        to_step_id as step_id,
        count(*) as reached
    from transitions
    where to_step_id is not null
    group by to_step_id
),

departures as (
    select
        transitions.from_step_id as step_id,
        count(*) filter (
            where transitions.transition_outcome in ('moved', 'completed')
        ) as moved_on,
        count(*) filter (where transitions.transition_outcome = 'completed') as completed,
        count(*) filter (where transitions.transition_outcome = 'exited') as exited,
        count(*) filter (
            where steps.step_type = 'condition'
            and transitions.transition_outcome = 'moved'
            and transitions.to_step_id is not distinct from steps.true_next_step_id
        ) as took_yes,
        count(*) filter (
            where steps.step_type = 'condition'
            and transitions.transition_outcome = 'moved'
            and transitions.to_step_id is not distinct from steps.false_next_step_id
        ) as took_no
    from transitions
    inner join steps on transitions.from_step_id = steps.step_id
    group by transitions.from_step_id
),

messages as (
    select
        step_id,
        count(*) filter (where is_sent) as sent,
        count(*) filter (where is_delivered) as delivered,
        count(*) filter (where is_opened) as unique_opens,
        count(*) filter (where is_clicked) as unique_clicks,
        count(*) filter (where is_replied) as replies
    from sends
    group by step_id
),

enrolled as (
    select
        campaign_id,
        count(*) as enrolled
    from transitions
    where transition_outcome = 'entered'
    group by campaign_id
),

final as (
    select
        steps.step_id,
        steps.tenant_id,
        tenants.tenant_name,
        steps.campaign_id,
        campaigns.campaign_name,
        steps.step_key,
        steps.step_name,
        steps.step_order,
        steps.step_type,
        steps.has_variants,
        steps.removed_at is not null as is_removed,
        yes_steps.step_key as yes_step_key,
        no_steps.step_key as no_step_key,
        coalesce(enrolled.enrolled, 0) as enrolled,
        coalesce(reached.reached, 0) as reached,
        coalesce(departures.moved_on, 0) as moved_on,
        coalesce(departures.completed, 0) as completed,
        coalesce(departures.exited, 0) as exited,
        coalesce(departures.took_yes, 0) as took_yes,
        coalesce(departures.took_no, 0) as took_no,
        greatest(
            coalesce(reached.reached, 0)
            - coalesce(departures.moved_on, 0)
            - coalesce(departures.exited, 0),
            0
        ) as standing,
        -- the funnel's shares, null when their denominator is 0
        {{ ratio('coalesce(reached.reached, 0)', 'enrolled.enrolled') }} as reached_share,
        {{ ratio('coalesce(departures.moved_on, 0)', 'reached.reached') }} as moved_on_share,
        coalesce(messages.sent, 0) as sent,
        coalesce(messages.delivered, 0) as delivered,
        coalesce(messages.unique_opens, 0) as opened,
        coalesce(messages.unique_clicks, 0) as clicked,
        coalesce(messages.replies, 0) as replied,
        -- the step's messages' rates, as every daily model has them (metric_rates.sql)
        {{ metric_rates(['open_rate', 'click_rate', 'reply_rate']) | indent(8) }},
        cast('{{ run_started_at }}' as timestamptz) as loaded_at
    from steps
    inner join campaigns on steps.campaign_id = campaigns.campaign_id
    inner join tenants on steps.tenant_id = tenants.tenant_id
    left join steps as yes_steps on steps.true_next_step_id = yes_steps.step_id
    left join steps as no_steps on steps.false_next_step_id = no_steps.step_id
    left join enrolled on steps.campaign_id = enrolled.campaign_id
    left join reached on steps.step_id = reached.step_id
    left join departures on steps.step_id = departures.step_id
    left join messages on steps.step_id = messages.step_id
)

select * from final
