{#- A data test's `where` config (dbt's own macro, overridden as its docs suggest), with one
    placeholder: `__latest_build__`, the start of the build that last wrote the tested model
    (its newest `loaded_at`), read as a literal when the test runs. A subquery's max() there
    would be unknown to the planner, which then scans every row of the fact to find the few
    the latest build wrote; a literal lets it find them by the `loaded_at` index. -#}
{% macro get_where_subquery(relation) -%}
    {%- set where = config.get('where', '') -%}
    {%- if where -%}
        {%- if '__latest_build__' in where -%}
            {%- set where = where | replace('__latest_build__', newest(relation, 'loaded_at')) -%}
        {%- endif -%}
        {%- set filtered -%}
            (select * from {{ relation }} where {{ where }}) dbt_subquery
        {%- endset -%}
        {%- do return(filtered) -%}
    {%- else -%}
        {%- do return(relation) -%}
    {%- endif -%}
{%- endmacro %}
