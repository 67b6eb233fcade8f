{#- The steps whose funnel does not balance: more branches taken than moves, more completed
    than moved on, a count below zero. (Enrollments older than the step history, migration
    0016, are seen from their next move on: more may leave a step than were seen arrive.) -#}
{% test step_funnel_balances(model) %}
select * from {{ model }}
where
    took_yes + took_no > moved_on
    or completed > moved_on
    or least(enrolled, reached, moved_on, exited, standing, sent, opened, clicked, replied) < 0
{% endtest %}
