"""The Overview page, run for real (AppTest) on generated marts and on an empty database."""

from __future__ import annotations

import json

import sqlalchemy as sa
from streamlit.testing.v1 import AppTest

from tests.dashboards.pages import every_rate_is, open_page


def _tiles(at: AppTest) -> dict[str, tuple[str, str]]:
    return {m.label: (m.value, m.delta) for m in at.metric}


def test_the_kpis_follow_the_period_and_the_tenant_in_the_url(use_database, generated):
    use_database(generated)
    month = open_page("overview")
    assert not month.exception, month.exception
    tiles = _tiles(month)
    assert list(tiles) == [
        "Sent",
        "Delivered",
        "Open rate",
        "Click rate",
        "Reply rate",
        "Bounce rate",
        "Unsubscribe rate",
    ]
    with generated.analytics.connect() as conn:
        tenant, expected = conn.execute(
            sa.text(
                # the picker opens on the tenant that sent last (the template's own tenant,
                # `default`, has sent nothing)
                "select tenant_name, sum(sent) filter (where send_date > current_date - 30) "
                "from analytics_marts.campaign_daily "
                "group by 1 order by max(send_date) desc, 1 limit 1"
            )
        ).one()
    assert month.sidebar.selectbox(key="tenant").value == tenant
    assert tiles["Sent"][0] == f"{expected:,}"
    week = open_page("overview", period="Last 7 days")
    assert _tiles(week)["Sent"][0] != tiles["Sent"][0]
    other = [n for n in month.sidebar.selectbox(key="tenant").options if n.startswith("gen-")]
    other = [n for n in other if n != tenant][0]
    assert _tiles(open_page("overview", tenant=other))["Sent"][0] != tiles["Sent"][0]
    assert month.get("arrow_vega_lite_chart") or month.get("vega_lite_chart")
    assert [b.label for b in month.get("download_button")] == ["Download CSV"]


def test_the_period_in_the_url_may_be_a_short_form(use_database, generated):
    use_database(generated)
    week = _tiles(open_page("overview", period="Last 7 days"))["Sent"]
    short_forms = [("7d", "Last 7 days"), ("90D", "Last 90 days"), ("month", "This month")]
    for short, name in [*short_forms, ("custom", "Custom"), ("Custom", "Custom")]:
        at = open_page("overview", period=short)
        assert not at.exception, at.exception
        assert at.sidebar.selectbox(key="period").value == name
    at = open_page("overview", period="7d")
    assert _tiles(at)["Sent"] == week
    at.run()  # the page's next run keeps the period
    assert at.sidebar.selectbox(key="period").value == "Last 7 days"
    assert _tiles(at)["Sent"] == week
    # and so does the URL the page leaves in the address bar: bookmarked or reloaded, it opens
    # on the same period
    assert at.query_params.get("period") in ("7d", "Last 7 days"), dict(at.query_params)
    reloaded = open_page("overview", **at.query_params)
    assert reloaded.sidebar.selectbox(key="period").value == "Last 7 days"
    # a period that is none still falls back to the default
    assert open_page("overview", period="7w").sidebar.selectbox(key="period").value == (
        "Last 30 days"
    )


def test_a_rate_reads_the_same_in_tiles_tables_and_charts(use_database, generated):
    use_database(generated)
    at = open_page("overview")
    tenant = at.sidebar.selectbox(key="tenant").value
    with generated.analytics.connect() as conn:
        opened, delivered = conn.execute(
            sa.text(
                "select sum(unique_opens), sum(delivered) from analytics_marts.campaign_daily "
                "where tenant_name = :t and send_date > current_date - 30"
            ),
            {"t": tenant},
        ).one()
    # as the table's "percent" column writes it: two decimals at most, trailing zeros dropped
    assert _tiles(at)["Open rate"][0] == f"{round(opened / delivered * 100, 2):g}%"
    columns = json.loads(at.dataframe[0].proto.columns)
    assert columns["open_rate"]["type_config"]["format"] == "percent"
    assert columns["open_rate_change_pp"]["type_config"]["format"] == "%+.2f pp"
    [chart] = at.get("arrow_vega_lite_chart") or at.get("vega_lite_chart")
    spec = json.loads(chart.proto.spec)
    [lines] = [layer for layer in spec["layer"] if layer["mark"]["type"] == "line"]
    [rate] = [t for t in lines["encoding"]["tooltip"] if t["field"] == "rate"]
    assert rate["format"] == ".2~%"


def test_a_campaign_filter_narrows_the_figures(use_database, generated):
    use_database(generated)
    at = open_page("overview")
    everything = int(_tiles(at)["Sent"][0].replace(",", ""))
    picker = at.sidebar.multiselect(key="campaign")
    with generated.analytics.connect() as conn:
        campaign, expected = conn.execute(
            sa.text(
                "select campaign_id::text, sum(sent) filter (where send_date > current_date - 30)"
                " from analytics_marts.campaign_daily where campaign_name = :n group by 1"
            ),
            {"n": picker.options[0]},
        ).one()
    picker.select(campaign).run()  # the same AppTest, run again
    assert not at.exception, at.exception
    assert _tiles(at)["Sent"][0] == f"{expected:,}"
    assert 0 < expected < everything


def test_a_period_with_nothing_before_it_still_compares(use_database, generated):
    # the generated data spans 30 days: the 90 days before "Last 90 days" hold nothing, and
    # the empty previous period must still join the current one
    use_database(generated)
    at = open_page("overview", period="Last 90 days")
    assert not at.exception, at.exception
    assert int(_tiles(at)["Sent"][0].replace(",", "")) > 0
    moved = at.dataframe[0].value
    assert len(moved) > 0
    assert (moved["sent_change"] == moved["sent"]).all()
    # no rate before, so no change of it: a dash in the table, not "None"
    assert moved["open_rate_change_pp"].isna().all()
    assert at.dataframe[0].proto.placeholder == "—"


def test_an_empty_database_says_what_to_do_first(empty_marts):
    at = open_page("overview")
    assert not at.exception, at.exception
    # the template's own tenant, `default`, which has sent nothing yet
    assert "Nothing has been sent yet" in at.info[0].value


def test_marts_not_built_yet_say_how_to_build_them(use_database, database):
    use_database(database)
    at = open_page("overview")
    assert not at.exception, at.exception
    assert "have not been built yet" in at.info[0].value


def test_every_rate_the_pages_show_is_the_marts_one_definition(use_database, generated):
    # The marts' rates function made to answer 12.5% for every rate: a page that divided
    # counts itself (or read them anywhere else) would show its own figure instead.
    use_database(generated)
    with every_rate_is(generated, 0.125):
        overview = open_page("overview")
        campaigns = open_page("campaigns")
        senders = open_page("senders")
        deliverability = open_page("deliverability")
    for at in (overview, campaigns, senders, deliverability):
        assert not at.exception, at.exception
    tiles = _tiles(overview)
    assert {tiles[label][0] for label in tiles if label != "Sent"} == {"12.5%"}, tiles
    assert {m.value for m in deliverability.metric if "rate" in m.label or "share" in m.label} == {
        "12.5%"
    }
    for at in (campaigns, senders):
        table = at.dataframe[0].value
        rates = [c for c in table.columns if c.endswith("_rate")]
        assert rates, table.columns
        values = set(table[rates].stack().dropna())
        assert values == {0.125}, (rates, values)
