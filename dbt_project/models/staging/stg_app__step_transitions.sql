with source as (
    select * from {{ source('app', 'step_transitions') }}
),

renamed as (
    select
        id as transition_id,
        tenant_id,
        campaign_id,
        campaign_contact_id,
        contact_id,
        from_step_id,
        to_step_id,
        outcome as transition_outcome,
        exit_reason,
        occurred_at
    from source
)

select * from renamed
