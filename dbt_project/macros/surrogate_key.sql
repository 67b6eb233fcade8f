{#- md5 of the given columns, each cast to text, nulls as ''. A stand-in for
    dbt_utils.generate_surrogate_key: this project uses no dbt hub packages. -#}
{% macro surrogate_key(columns) -%}
    md5(
    {%- for column in columns -%}
        coalesce(cast({{ column }} as text), '')
        {%- if not loop.last %} || '|' || {% endif -%}
    {%- endfor -%}
    )
{%- endmacro %}
