{#- The metrics of a set of messages, as aggregates over `fct_sends` rows (the definitions are
    written out in metrics.md): sent, failed, unknown and pending split the messages, a message
    the recipient acted on being sent whatever its status. -#}
{% macro message_metrics() -%}
        count(*) filter (where is_sent) as sent,
        count(*) filter (where send_status = 'failed' and not is_sent) as failed,
        count(*) filter (where send_status = 'unknown' and not is_sent) as unknown,
        count(*) filter (where send_status in ('queued', 'sending') and not is_sent) as pending,
        count(*) filter (where is_bounced_hard) as bounced_hard,
        count(*) filter (where is_bounced_soft) as bounced_soft,
        count(*) filter (where is_delivered) as delivered,
        count(*) filter (where is_opened) as unique_opens,
        count(*) filter (where is_clicked) as unique_clicks,
        count(*) filter (where is_replied) as replies,
        count(*) filter (where is_unsubscribed) as unsubscribes,
        count(*) filter (where is_complained) as complaints,
        coalesce(sum(human_opens), 0) as total_opens,
        coalesce(sum(human_clicks), 0) as total_clicks,
        coalesce(sum(machine_opens), 0) as machine_opens
{%- endmacro %}

{#- With vars `start_date` and `end_date` (a Dagster partition range, a backfill), the
    predicate "`day` is one of those days"; none without them. -#}
{% macro partition_days(day) -%}
    {%- if var('start_date', none) is not none -%}
        {{ day }} between cast('{{ var("start_date") }}' as date)
            and cast('{{ var("end_date", var("start_date")) }}' as date)
    {%- endif -%}
{%- endmacro %}

{#- Which days a daily model rebuilds, as a predicate on its source's rows (`day` and
    `tenant_id`): with vars `start_date` and `end_date`, those days; incrementally, the tenants'
    days (`day` of `model`) of the rows merged into `model` since this model's last build (a late
    event's message brings its send day back); otherwise every day. The incremental days are
    read when the model runs (by `model`'s `loaded_at` index) and written into the query as a
    VALUES list: the planner then knows how few they are and reads their rows by the source's
    (tenant_id, day) index, where a subquery's few pairs, estimated from statistics taken before
    the build, once planned a scan of all ten million events. The models' unique key is
    (tenant_id, day): delete+insert replaces exactly those tenants' days. -#}
{% macro days_to_build(day, model) -%}
    {%- if var('start_date', none) is not none -%}
        {{ partition_days(day) }}
    {%- elif is_incremental() -%}
        {%- set pairs = [] -%}
        {%- if execute -%}
            {%- set found = run_query(
                "select distinct tenant_id::text, " ~ day ~ "::text from " ~ ref(model)
                ~ " where loaded_at > " ~ newest(this, 'loaded_at') ~ " order by 1, 2"
            ) -%}
            {%- for row in found.rows %}{% do pairs.append((row[0], row[1])) %}{% endfor -%}
        {%- endif -%}
        {%- if pairs -%}
        (tenant_id, {{ day }}) in (
            values
            {%- for tenant, changed_day in pairs %}
            (cast('{{ tenant }}' as uuid), cast('{{ changed_day }}' as date)){{ ',' if not loop.last }}
            {%- endfor %}
        )
        {%- else -%}
        false
        {%- endif -%}
    {%- else -%}
        true
    {%- endif -%}
{%- endmacro %}

{#- A daily model, `name`_daily: the metrics and rates of `fct_sends` per send day and
    `dimensions`, with the tenant's name and, per `labels` ({model: [columns]}, joined on the
    model's first column), the dimensions' names. Incremental: delete+insert of the days
    `days_to_build` picks. -#}
{% macro daily_model(name, dimensions, labels={}) -%}
{%- set key_columns = ['daily.send_date', 'daily.tenant_id'] -%}
{%- for dimension in dimensions %}{% do key_columns.append('daily.' ~ dimension) %}{% endfor -%}
with sends as (
    select * from {{ ref('fct_sends') }}
),

tenants as (
    select * from {{ ref('stg_app__tenants') }}
),

daily as (
    select
        sends.send_date,
        sends.tenant_id,
        {% for dimension in dimensions -%}
        sends.{{ dimension }},
        {% endfor -%}
        {{ message_metrics() }}
    from sends
    where {{ days_to_build('send_date', 'fct_sends') }}
    group by sends.send_date, sends.tenant_id
        {%- for dimension in dimensions %}, sends.{{ dimension }}{% endfor %}
),

final as (
    select
        {{ surrogate_key(key_columns) }} as {{ name }}_day_id,
        daily.send_date,
        daily.tenant_id,
        tenants.tenant_name,
        {% for dimension in dimensions -%}
        daily.{{ dimension }},
        {% endfor -%}
        {% for model, columns in labels.items() -%}
        {% for column in columns[1:] -%}
        {{ model }}.{{ column }},
        {% endfor -%}
        {% endfor -%}
        daily.sent, daily.failed, daily.unknown, daily.pending,
        daily.bounced_hard, daily.bounced_soft, daily.delivered,
        daily.unique_opens, daily.unique_clicks, daily.replies, daily.unsubscribes,
        daily.complaints, daily.total_opens, daily.total_clicks, daily.machine_opens,
        {{ metric_rates() }},
        cast('{{ run_started_at }}' as timestamptz) as loaded_at
    from daily
    join tenants on tenants.tenant_id = daily.tenant_id
    {% for model, columns in labels.items() -%}
    left join {{ ref(model) }} as {{ model }} on {{ model }}.{{ columns[0] }} = daily.{{ columns[0] }}
    {% endfor %}
)

select * from final
{%- endmacro %}

{#- What a contact did with its messages, as aggregates over its `fct_sends` rows. -#}
{% macro contact_activity() -%}
count(*) filter (where is_sent) as messages_sent,
count(*) filter (where is_opened) as messages_opened,
count(*) filter (where is_clicked) as messages_clicked,
count(*) filter (where is_replied) as messages_replied,
max(first_open_at) as last_open_at,
max(first_click_at) as last_click_at,
max(first_reply_at) as last_reply_at,
max(sent_at) as last_sent_at
{%- endmacro %}
