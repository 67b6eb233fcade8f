with source as (
    select * from {{ source('app', 'campaign_steps') }}
),

renamed as (
    select
        id as step_id,
        tenant_id,
        campaign_id,
        key as step_key,
        step_order,
        name as step_name,
        step_type,
        subject as step_subject,
        wait_duration,
        next_step_id,
        true_next_step_id,
        false_next_step_id,
        variants is not null as has_variants,
        removed_at,
        created_at,
        updated_at
    from source
)

select * from renamed
