{#- One row per contact: its lists, tags and status, what it did with the messages it got, and
    an engagement score (formula in marts.yml). -#}

with contacts as (
    select * from {{ ref('stg_app__contacts') }}
),

members as (
    select * from {{ ref('stg_app__contact_list_members') }}
),

sends as (
    select * from {{ ref('fct_sends') }}
),

lists as (
    select
        contact_id,
        array_agg(list_name order by list_name) as lists
    from members
    group by contact_id
),

activity as (
    select
        contact_id,
        count(*) filter (where is_sent) as messages_sent,
        count(*) filter (where is_opened) as messages_opened,
        count(*) filter (where is_clicked) as messages_clicked,
        count(*) filter (where is_replied) as messages_replied,
        max(first_open_at) as last_open_at,
        max(first_click_at) as last_click_at,
        max(first_reply_at) as last_reply_at,
        max(sent_at) as last_sent_at
    from sends
    group by contact_id
),

final as (
    select
        contacts.contact_id,
        contacts.tenant_id,
        contacts.email,
        contacts.email_domain,
        contacts.first_name,
        contacts.last_name,
        contacts.company,
        contacts.job_title,
        contacts.country,
        contacts.lead_score,
        contacts.contact_status,
        contacts.tags,
        coalesce(lists.lists, '{}') as lists,
        coalesce(activity.messages_sent, 0) as messages_sent,
        coalesce(activity.messages_opened, 0) as messages_opened,
        coalesce(activity.messages_clicked, 0) as messages_clicked,
        coalesce(activity.messages_replied, 0) as messages_replied,
        activity.last_sent_at,
        activity.last_open_at,
        activity.last_click_at,
        activity.last_reply_at,
        case
            when contacts.contact_status <> 'active' then 0
            else least(
                    100,
                    5 * coalesce(activity.messages_opened, 0)
                    + 15 * coalesce(activity.messages_clicked, 0)
                    + 40 * coalesce(activity.messages_replied, 0)
                )
        end as engagement_score,
        contacts.created_at
    from contacts
    left join lists on contacts.contact_id = lists.contact_id
    left join activity on contacts.contact_id = activity.contact_id
)

select * from final
