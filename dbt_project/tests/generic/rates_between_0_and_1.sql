{#- The rows of a daily model with a rate (any `*_rate` column, so a new rate is held to it
    too) below 0 or above 1: a count over delivered that holds a message not delivered, as an
    opened message that later soft-bounced once did (open_rate 2.0). Null, for a denominator
    of 0, passes. -#}
{% test rates_between_0_and_1(model) %}
{%- set rates = [] -%}
{%- if execute -%}
    {%- for column in adapter.get_columns_in_relation(model) -%}
        {%- if column.name.endswith('_rate') %}{% do rates.append(column.name) %}{% endif -%}
    {%- endfor -%}
    {%- if not rates -%}
        {{ exceptions.raise_compiler_error(model ~ " has no *_rate column to test") }}
    {%- endif -%}
{%- endif %}
select * from {{ model }}
where
    false
    {%- for rate in rates %}
    or {{ rate }} not between 0 and 1
    {%- endfor %}
{% endtest %}
