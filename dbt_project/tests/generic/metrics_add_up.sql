{#- The rows of a daily model whose metrics do not add up: a count that is null or negative,
    delivered other than sent − bounced_hard − bounced_soft, more unique opens or clicks than
    human ones. One scan for what a not_null test per column would take fifteen for. -#}
{% test metrics_add_up(model) %}
{%- set counts = [
    'sent', 'failed', 'unknown', 'pending', 'bounced_hard', 'bounced_soft', 'delivered',
    'unique_opens', 'unique_clicks', 'replies', 'unsubscribes', 'complaints',
    'total_opens', 'total_clicks', 'machine_opens'
] %}
select * from {{ model }}
where
    {%- for count in counts %}
    {{ count }} is null or {{ count }} < 0 or
    {%- endfor %}
    delivered <> sent - bounced_hard - bounced_soft
    or unique_opens > total_opens
    or unique_clicks > total_clicks
{% endtest %}
