{#- The newest `column` of `relation` ('-infinity' when it has no rows) as a timestamptz
    literal, read when the model runs. Incremental filters compare with it: a subquery's value
    is unknown to the planner, which then guesses that a third of the table matches and scans
    it all, where a constant lets it use the index on the column. -#}
{% macro newest(relation, column) -%}
    {%- set value = '-infinity' -%}
    {%- if execute -%}
        {%- set found = run_query(
            "select coalesce(max(" ~ column ~ "), '-infinity')::text from " ~ relation
        ) -%}
        {%- set value = found.columns[0].values()[0] -%}
    {%- endif -%}
    cast('{{ value }}' as timestamptz)
{%- endmacro %}
