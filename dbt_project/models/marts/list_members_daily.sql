{#- Members added to each list per day (in the tenant's reporting time zone), for the lists'
    growth. A member who left is not in the table any more, so a day counts the members added
    that day who are still on the list. -#}

with members as (
    select * from {{ ref('stg_app__contact_list_members') }}
),

tenants as (
    select * from {{ ref('stg_app__tenants') }}
),

final as (
    select
        {{ surrogate_key(['members.tenant_id', 'members.list_id',
            '(members.added_at at time zone tenants.reporting_timezone)::date']) }}
            as list_day_id,
        members.tenant_id,
        tenants.tenant_name,
        members.list_id,
        members.list_name,
        (members.added_at at time zone tenants.reporting_timezone)::date as added_date,
        count(*) as members_added
    from members
    inner join tenants on members.tenant_id = tenants.tenant_id
    group by
        members.tenant_id, tenants.tenant_name, members.list_id, members.list_name,
        (members.added_at at time zone tenants.reporting_timezone)::date
)

select * from final
