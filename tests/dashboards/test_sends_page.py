"""The Streamlit app, run for real (AppTest) against marts dbt built from real sends."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from streamlit.testing.v1 import AppTest

from engine.config import PROJECT_ROOT
from tests.dashboards.pages import DownloadFiles, every_rate_is, open_page

#: With pytest-xdist, the tests of the session's `built_pipeline` share one worker, which
#: builds it once.
pytestmark = pytest.mark.xdist_group("built_pipeline")

APP = str(PROJECT_ROOT / "dashboards" / "app.py")


def _sends_page() -> AppTest:
    """The app, on its Sends page (the Overview opens first)."""
    return AppTest.from_file(APP, default_timeout=60).run().switch_page("pages/sends.py").run()


@pytest.fixture
def app_env(use_database, built_pipeline):
    use_database(built_pipeline.database)


def test_sends_page_shows_the_days_sends(app_env):
    at = _sends_page()
    assert not at.exception, at.exception
    assert at.title[0].value == "Sends"
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Sent today"] == "40"
    assert metrics["Sent in range"] == "40"
    assert metrics["Bounce rate"] == "0%"  # as the table's "percent" column writes it
    table = at.dataframe[0].value
    assert list(table["campaign_name"]) == ["Welcome to PenguinMails"]
    assert list(table["sent"]) == [40]
    assert any(c.value.startswith("Data as of ") for c in at.caption), [c.value for c in at.caption]


def test_the_sends_headline_rates_are_the_marts_one_definition(app_env, built_pipeline):
    # the marts' rates function answering 12.5%: a page dividing counts itself would not
    with every_rate_is(built_pipeline.database, 0.125):
        at = _sends_page()
    assert not at.exception, at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Bounce rate"] == metrics["Open rate"] == "12.5%", metrics


def test_the_sends_download_neutralizes_a_campaign_named_like_a_formula(
    app_env, built_pipeline, monkeypatch
):
    files = DownloadFiles(monkeypatch)
    named = sa.text("update analytics_marts.campaign_daily set campaign_name = :new")
    with built_pipeline.database.owner.begin() as conn:
        old = conn.execute(
            sa.text("select distinct campaign_name from analytics_marts.campaign_daily")
        ).scalar_one()
        conn.execute(named, {"new": '=HYPERLINK("http://evil.example","x")'})
    try:
        at = _sends_page()
        assert not at.exception, at.exception
        rows = list(csv.DictReader(io.StringIO(files.text(at, "Download CSV"))))
    finally:
        with built_pipeline.database.owner.begin() as conn:
            conn.execute(named, {"new": old})
    assert [row["campaign_name"] for row in rows] == ['\'=HYPERLINK("http://evil.example","x")']
    assert [row["sent"] for row in rows] == ["40"]


def test_sends_page_explains_missing_marts(use_database, database):
    use_database(database)
    at = _sends_page()
    assert not at.exception, at.exception
    assert "analytics marts have not been built yet" in at.info[0].value


def test_the_sends_page_follows_the_sidebars_tenant_and_period(use_database, generated):
    use_database(generated)
    opened = open_page("sends")
    assert not opened.exception, opened.exception
    picker = opened.sidebar.selectbox(key="tenant")
    other = next(n for n in picker.options if n.startswith("gen-") and n != picker.value)
    at = open_page("sends", tenant=other, period="7d")
    assert not at.exception, at.exception
    assert at.sidebar.selectbox(key="tenant").value == other
    assert at.sidebar.selectbox(key="period").value == "Last 7 days"
    assert not at.sidebar.date_input  # no picker of its own beside the period
    with generated.analytics.connect() as conn:
        campaigns, sent = conn.execute(
            sa.text(
                "select array_agg(distinct campaign_name), sum(sent) "
                "from analytics_marts.campaign_daily "
                "where tenant_name = :t and send_date > current_date - 7"
            ),
            {"t": other},
        ).one()
    table = at.dataframe[0].value
    assert set(table["campaign_name"]) <= set(campaigns)
    assert min(table["day"]).date() >= datetime.now(UTC).date() - timedelta(days=6)
    assert {m.label: m.value for m in at.metric}["Sent in range"] == f"{sent:,}"


def test_the_sends_page_shows_rates_as_every_page_does(use_database, generated):
    use_database(generated)
    with generated.analytics.connect() as conn:
        tenant, opened, delivered = conn.execute(
            sa.text(
                "select tenant_name, sum(unique_opens), sum(delivered) "
                "from analytics_marts.campaign_daily where send_date > current_date - 30 "
                "group by 1 order by 1 limit 1"
            )
        ).one()
    at = open_page("sends", tenant=tenant)
    tiles = {m.label: m.value for m in at.metric}
    # as the table's "percent" column writes it: two decimals at most, trailing zeros dropped
    assert tiles["Open rate"] == f"{round(opened / delivered * 100, 2):g}%"
    table = at.dataframe[0]
    assert table.proto.placeholder == "—"
    columns = json.loads(table.proto.columns)
    assert columns["open_rate"]["type_config"]["format"] == "percent"
