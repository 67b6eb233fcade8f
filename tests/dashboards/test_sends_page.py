"""The Streamlit app, run for real (AppTest) against marts dbt built from real sends."""

from __future__ import annotations

import csv
import io

import pytest
import sqlalchemy as sa
from streamlit.testing.v1 import AppTest

from engine.config import PROJECT_ROOT
from tests.dashboards.pages import DownloadFiles, every_rate_is

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
    assert metrics["Bounce rate"] == "0.0%"
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
