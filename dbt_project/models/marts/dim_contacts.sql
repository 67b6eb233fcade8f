{%- set xmin = last_build_xmin() %}
{%- set by_changes = is_incremental() and xmin is not none %}
{{
    config(
        materialized='incremental',
        unique_key='contact_id',
        incremental_strategy='merge',
        on_schema_change='sync_all_columns',
        indexes=[
            {'columns': ['contact_id'], 'unique': True},
            {'columns': ['tenant_id', 'engagement_score']},
            {'columns': ['loaded_at']},
            {'columns': ['build_xmin']},
        ]
    )
}}

{#- One row per contact: its lists, tags and status, what it did with the messages it got, and
    an engagement score (formula in marts.yml).

    Incremental: each build merges the contacts that changed since the previous one: written
    (status, tags, fields) by a transaction that had not committed when the previous build read
    them (`change_xid`, in commit order: macros/change_order.sql), given a message or an
    outcome (their `fct_sends` rows merged since this model's last build), or whose lists are
    not the ones stored here (a list joined, left or renamed leaves no trace on the contact, so
    every contact's lists are compared: one pass over the memberships, cheap beside the
    messages). Their activity is recomputed from all of their
    messages, looked up by `fct_sends`' (tenant_id, contact_id) index. -#}

with contacts as not materialized (
    select * from {{ ref('stg_app__contacts') }}
),

members as (
    select * from {{ ref('stg_app__contact_list_members') }}
),

sends as not materialized (
    select * from {{ ref('fct_sends') }}
),

lists as (
    select
        tenant_id,
        contact_id,
        array_agg(list_name order by list_name) as lists
    from members
    group by tenant_id, contact_id
),

{% if by_changes %}
changed as (
    select
        contacts.tenant_id,
        contacts.contact_id
    from contacts
    where {{ changed_since('contacts.change_xid', xmin) }}
    union
    select
        sends.tenant_id,
        sends.contact_id
    from sends
    where sends.loaded_at > {{ newest(this, 'loaded_at') }}
    union
    select
        coalesce(lists.tenant_id, in_mart.tenant_id) as tenant_id,
        coalesce(lists.contact_id, in_mart.contact_id) as contact_id
    from lists
    full join {{ this }} as in_mart on lists.contact_id = in_mart.contact_id
    where coalesce(lists.lists, '{}') is distinct from coalesce(in_mart.lists, '{}')
),

in_scope as (
    -- each changed contact looked up by its key, in a lateral (a join with the staging view
    -- would read every contact; fct_sends.sql says why)
    select looked_up.*
    from changed
    cross join
        lateral (
            select contacts.*
            from contacts
            where
                contacts.tenant_id = changed.tenant_id
                and contacts.contact_id = changed.contact_id
            order by contacts.contact_id
            limit 1
        ) as looked_up
),

activity as (
    select
        in_scope.contact_id,
        per_contact.*
    from in_scope
    cross join
        lateral (
            select
                {{ contact_activity() | trim | indent(16) }}
            from sends
            where
                sends.tenant_id = in_scope.tenant_id
                and sends.contact_id = in_scope.contact_id
        ) as per_contact
),
{% else %}
in_scope as (
    select * from contacts
),

activity as (
    select
        contact_id,
        {{ contact_activity() | trim | indent(8) }}
    from sends
    group by contact_id
),
{% endif %}

final as (
    select
        in_scope.contact_id,
        in_scope.tenant_id,
        in_scope.email,
        in_scope.email_domain,
        in_scope.first_name,
        in_scope.last_name,
        in_scope.company,
        in_scope.job_title,
        in_scope.country,
        in_scope.lead_score,
        in_scope.contact_status,
        in_scope.tags,
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
            when in_scope.contact_status <> 'active' then 0
            else least(
                    100,
                    5 * coalesce(activity.messages_opened, 0)
                    + 15 * coalesce(activity.messages_clicked, 0)
                    + 40 * coalesce(activity.messages_replied, 0)
                )
        end as engagement_score,
        in_scope.created_at,
        in_scope.updated_at,
        {{ build_xmin() }} as build_xmin,
        cast('{{ run_started_at }}' as timestamptz) as loaded_at
    from in_scope
    left join lists on in_scope.contact_id = lists.contact_id
    left join activity on in_scope.contact_id = activity.contact_id
)

select * from final
