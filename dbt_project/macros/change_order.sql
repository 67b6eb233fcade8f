{#- Changes in commit order (migration 0020). Every source row an incremental model watches
    carries `change_xid`, the transaction that last wrote it, set by the database whatever
    clock or values the writer had. An incremental model stores in each row it writes
    `build_xmin`, the oldest transaction still running when the statement that built the row
    read its sources (`build_xmin()`): every transaction below it had committed and was seen.
    The next build takes the rows whose `change_xid` is at least the newest `build_xmin` stored
    (`last_build_xmin()`): every transaction that had not committed when the last build looked,
    whatever time its rows carry (a writer's future `now`, a back-dated generator, a host whose
    clock is behind). A few rows seen before come again (transactions that committed while that
    build ran): the merge makes that harmless. -#}

{#- The snapshot xmin of the statement that evaluates it: the statement that reads the sources
    (a model's select), so nothing below it was invisible to it. -#}
{% macro build_xmin() -%}
    pg_snapshot_xmin(pg_current_snapshot())
{%- endmacro %}

{#- The newest `build_xmin` of the model being built, as text, read when the model runs; none
    when it has none: no table yet, a table from before migration 0020 (no such column), or
    only day-range builds so far; none too when it is a transaction this server has not reached
    yet: the database was restored from another server's dump (pg_dump keeps the values, a new
    server counts its transactions from its own start), and every change since would be below
    it and never found. None means "everything changed": the model then builds every row, as a
    full build would, and merges them. -#}
{% macro last_build_xmin() -%}
    {%- if not execute or not is_incremental() -%}
        {{ return(none) }}
    {%- endif -%}
    {%- set columns = adapter.get_columns_in_relation(this) | map(attribute='name') | list -%}
    {%- if 'build_xmin' not in columns -%}
        {{ return(none) }}
    {%- endif -%}
    {%- set found = run_query(
        "select max(build_xmin)::text, max(build_xmin) > pg_snapshot_xmax(pg_current_snapshot())"
        ~ " from " ~ this
    ) -%}
    {%- if found.columns[1].values()[0] -%}
        {{ return(none) }}
    {%- endif -%}
    {{ return(found.columns[0].values()[0]) }}
{%- endmacro %}

{#- The predicate "`column` (a source's `change_xid`) changed at or after `xmin`". A row this
    statement sees was written by a transaction below its snapshot's xmax; one above it can
    only come from another server's dump (see `last_build_xmin`), and the full build after the
    restore has it: left out, or every build until this server's count passes it would take
    it again. -#}
{% macro changed_since(column, xmin) -%}
    {{ column }} >= cast('{{ xmin }}' as xid8)
    and {{ column }} < pg_snapshot_xmax(pg_current_snapshot())
{%- endmacro %}

{#- What a build stores as `build_xmin`: its own statement's (`build_xmin()`), or, for a
    day-range build (vars `start_date`, `end_date`), the watermark it found (`xmin`): such a
    build reads only its days' rows, so the changes on other days since the last build are
    still to be taken by the next incremental one. -#}
{% macro stored_build_xmin(xmin) -%}
    {%- if var('start_date', none) is none -%}
        {{ build_xmin() }}
    {%- elif xmin is none -%}
        cast(null as xid8)
    {%- else -%}
        cast('{{ xmin }}' as xid8)
    {%- endif -%}
{%- endmacro %}
