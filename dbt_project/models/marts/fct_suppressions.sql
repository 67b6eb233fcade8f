{#- One row per suppressed address, with its reason and the day it was suppressed in the
    tenant's reporting time zone (the Contacts page counts them by reason and day). -#}

with suppressions as (
    select * from {{ ref('stg_app__suppressions') }}
),

tenants as (
    select * from {{ ref('stg_app__tenants') }}
),

final as (
    select
        suppressions.suppression_id,
        suppressions.tenant_id,
        tenants.tenant_name,
        suppressions.email,
        suppressions.email_domain,
        suppressions.suppression_reason,
        suppressions.created_at,
        (suppressions.created_at at time zone tenants.reporting_timezone)::date as suppressed_date
    from suppressions
    inner join tenants on suppressions.tenant_id = tenants.tenant_id
)

select * from final
