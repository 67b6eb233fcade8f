{#- analytics_<custom> for every model with a custom schema: analytics_staging, analytics_marts.
    The same rule as dbt's default, spelled out because the dashboards depend on it. -#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}
        {{ target.schema }}
    {%- else -%}
        {{ target.schema }}_{{ custom_schema_name | trim }}
    {%- endif -%}
{%- endmacro %}
