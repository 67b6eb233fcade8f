with members as (
    select * from {{ source('app', 'contact_list_members') }}
),

lists as (
    select * from {{ source('app', 'contact_lists') }}
),

renamed as (
    select
        members.tenant_id,
        members.list_id,
        lists.name as list_name,
        members.contact_id,
        members.added_at
    from members
    inner join lists on members.list_id = lists.id
)

select * from renamed
