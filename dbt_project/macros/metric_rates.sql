{#- Every rate, defined once: (name, numerator, denominator) over the counts of
    `message_metrics` (metrics.md says what each means). A rate is null, not zero, when its
    denominator is 0; over a period it is the sums' ratio, never an average of daily rates. The
    daily models render the rates from here (`metric_rates`), and so does the SQL function the
    dashboards call over the sums of any period's rows (`create_metric_rates_function`). -#}
{% macro rate_definitions() -%}
    {{ return([
        ('delivery_rate', 'delivered', 'sent'),
        ('bounce_rate', 'bounced_hard + bounced_soft', 'sent'),
        ('open_rate', 'unique_opens', 'delivered'),
        ('click_rate', 'unique_clicks', 'delivered'),
        ('reply_rate', 'replies', 'delivered'),
        ('unsubscribe_rate', 'unsubscribes', 'delivered'),
        ('complaint_rate', 'complaints', 'delivered'),
        ('machine_open_share', 'machine_opens', 'machine_opens + total_opens'),
    ]) }}
{%- endmacro %}

{#- The counts the rates are made of, in the function's argument order. -#}
{% macro rate_inputs() -%}
    {{ return([
        'sent', 'delivered', 'bounced_hard', 'bounced_soft', 'unique_opens', 'unique_clicks',
        'replies', 'unsubscribes', 'complaints', 'machine_opens', 'total_opens'
    ]) }}
{%- endmacro %}

{#- The rates the daily models hold, as select-list items over their counts (the machine-open
    share only the dashboards show, from the function). -#}
{% macro metric_rates(names=none) -%}
    {%- for name, numerator, denominator in rate_definitions()
        if names is none and name != 'machine_open_share' or names is not none and name in names
    %}
        {{ ratio(numerator, denominator) }} as {{ name }}{{ ',' if not loop.last }}
    {%- endfor %}
{%- endmacro %}

{% macro ratio(numerator, denominator) -%}
    ({{ numerator }})::float8 / nullif({{ denominator }}, 0)
{%- endmacro %}

{#- `analytics_marts.metric_rates(sent, delivered, ...)`: every rate of `rate_definitions` from
    the counts of any set of daily rows, one row; the dashboards call it (`cross join lateral`)
    over the sums of the rows they show, so a period's rate has the marts' definition. Run by
    `on-run-start` (dbt_project.yml), as the analytics role: it owns the function like every
    object of its schemas, with a fixed search path, executable by the dashboards' role alone.
    Replaced on every run (an advisory lock orders concurrent runs), so a changed definition
    reaches the function with the next build; a changed argument or result list needs a
    `drop function` here first. -#}
{% macro create_metric_rates_function() -%}
    {%- set schema = generate_schema_name('marts', none) -%}
    {%- set arguments -%}
        {%- for count in rate_inputs() %}{{ count }} bigint{{ ', ' if not loop.last }}{% endfor -%}
    {%- endset -%}
    {%- set signature = adapter.quote(schema) ~ '.metric_rates(' ~ arguments ~ ')' -%}
do $create$
begin
    perform pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('penguinmails.metric_rates'));
    create or replace function {{ signature }}
    returns table (
        {%- for name, numerator, denominator in rate_definitions() %}
        {{ name }} float8{{ ',' if not loop.last }}
        {%- endfor %}
    )
    language sql immutable parallel safe
    set search_path = pg_catalog
    as $rates$
        select
            {{- metric_rates(rate_definitions() | map(attribute=0) | list) }}
    $rates$;
    revoke all on function {{ signature }} from public;
    grant execute on function {{ signature }} to penguin_dashboards;
end
$create$
{%- endmacro %}
