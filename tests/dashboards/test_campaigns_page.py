"""The Campaigns page, run for real (AppTest) on generated marts and on an empty database."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
import streamlit as st

from dashboards import operate
from engine.campaigns import CampaignError
from engine.db import tenant_transaction
from engine.forecasts import FORECAST_DAYS, refresh_all_tenants
from engine.sequence.forecast import forecast
from tests.dashboards.pages import open_page
from tests.factories import SeededTenant, dbt, seed_tenant


def _live_status(db, campaign_id: str) -> str:
    with db.owner.connect() as conn:
        return conn.execute(
            sa.text("select status from app.campaigns where id = :id"), {"id": campaign_id}
        ).scalar_one()


def test_every_campaign_is_listed_with_its_period_figures(use_database, generated):
    use_database(generated)
    at = open_page("campaigns")
    assert not at.exception, at.exception
    tenant = at.sidebar.selectbox(key="tenant").value
    with generated.analytics.connect() as conn:
        expected = dict(
            conn.execute(
                sa.text(
                    "select c.campaign_name, sum(d.sent) filter "
                    "  (where d.send_date > current_date - 30) "
                    "from analytics_marts.dim_campaigns c "
                    "left join analytics_marts.campaign_daily d using (campaign_id) "
                    "where c.tenant_name = :t group by 1"
                ),
                {"t": tenant},
            ).all()
        )
    table = at.dataframe[0].value
    assert dict(zip(table["campaign_name"], table["sent"], strict=True)) == expected
    # a campaign not completed has no completion date: a dash, not "None"
    assert table["completed_at"].isna().any()
    assert at.dataframe[0].proto.placeholder == "—"
    week = open_page("campaigns", period="Last 7 days").dataframe[0].value
    assert week["sent"].sum() < table["sent"].sum()


def test_a_campaign_in_the_url_opens_its_trend_and_settings(use_database, generated):
    use_database(generated)
    with generated.analytics.connect() as conn:
        tenant, campaign, name = conn.execute(
            sa.text(
                "select tenant_name, campaign_id::text, campaign_name "
                "from analytics_marts.dim_campaigns where tenant_name like 'gen-%' "
                "order by campaign_name limit 1"
            )
        ).one()
    # the URL names a bound widget's option as it is shown: the campaign's name
    at = open_page("campaigns", tenant=tenant, campaign_page=name)
    assert not at.exception, at.exception
    assert at.selectbox(key="campaign_page").value == campaign
    assert [h.value for h in at.subheader] == [
        name,
        "Send forecast",
        "Settings",
        "Operators' corner",
    ]
    assert at.metric[0].label == "Sent"
    rows = at.dataframe[2].value
    settings = dict(zip(rows["Setting"], rows["Value"], strict=True))
    assert settings["Name"] == name
    zone = settings["Time zone"]
    # full timestamps, to the second, in the campaign's zone, named
    assert re.fullmatch(rf"\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d {re.escape(zone)}", settings["Created"])
    assert "None" not in settings.values()
    # another tenant's campaign in the URL opens nothing
    other = open_page("campaigns", tenant="default", campaign_page=name)
    assert not other.exception, other.exception
    assert [h.value for h in other.subheader] == []


def test_a_tenant_without_campaigns_is_told_how_to_make_one(empty_marts):
    at = open_page("campaigns")
    assert not at.exception, at.exception
    assert "has no campaigns yet" in at.info[0].value


@pytest.fixture
def launched(use_database, database, tmp_path) -> tuple[SeededTenant, SeededTenant]:
    """Two tenants, each with a launched campaign whose three contacts are enrolled and due."""
    use_database(database)
    now = datetime.now(UTC)
    return seed_tenant(database, "alpha", now, tmp_path), seed_tenant(
        database, "bravo", now, tmp_path
    )


def _analytics_run(database) -> datetime:
    """What an analytics run does: store every campaign's forecast, then build the marts."""
    at = datetime.now(UTC)
    refresh_all_tenants(database.app, at)
    dbt(database, "build", "--exclude-resource-type", "unit_test")
    return at


def test_a_campaigns_forecast_is_the_engines_beside_what_it_sent(database, launched):
    alpha, _ = launched
    forecast_at = _analytics_run(database)
    at = open_page("campaigns", tenant="alpha", campaign_page="alpha outreach")
    assert not at.exception, at.exception
    assert [h.value for h in at.subheader][1] == "Send forecast"
    table = at.dataframe[1].value
    assert len(table) == FORECAST_DAYS
    with tenant_transaction(database.app, alpha.tenant_id) as conn:
        expected = forecast(conn, alpha.campaign_id, forecast_at, FORECAST_DAYS)
    assert table["total"].sum() == expected.total == 3  # its three enrolled contacts, today
    assert table["total"].iloc[0] == 3
    assert list(table.columns) == ["day", "Step 1", "total"]  # the step, not its key "1"
    assert any(expected.summary() in c.value for c in at.caption)
    assert any(forecast_at.strftime("from %Y-%m-%d %H:%M UTC") in c.value for c in at.caption)
    charts = at.get("arrow_vega_lite_chart") or at.get("vega_lite_chart")
    assert len(charts) == 1  # nothing sent yet: no trend, the forecast's chart
    # one day forecast: a day axis ticking at midnights, the day's own the only one in range
    x = json.loads(charts[0].proto.spec)["layer"][0]["encoding"]["x"]
    assert x["axis"]["tickCount"] == {"interval": "day", "step": 1}
    first, last = x["scale"]["domain"]
    assert (first["date"], last["date"], last["hours"]) == (forecast_at.day, forecast_at.day, 23)
    assert "Download CSV" in [b.label for b in at.get("download_button")]


def test_a_campaign_without_a_forecast_yet_says_what_makes_one(database, launched):
    dbt(database, "build", "--exclude-resource-type", "unit_test")  # marts, no forecast yet
    at = open_page("campaigns", tenant="alpha", campaign_page="alpha outreach")
    assert not at.exception, at.exception
    assert any("next analytics run makes one" in i.value for i in at.info)


def test_a_campaign_that_cannot_be_forecast_says_why(database, launched):
    alpha, _ = launched
    with database.owner.begin() as conn:  # its only step removed under its enrollments
        conn.execute(
            sa.text("update app.campaign_steps set removed_at = now() where campaign_id = :id"),
            {"id": alpha.campaign_id},
        )
    _analytics_run(database)
    at = open_page("campaigns", tenant="alpha", campaign_page="alpha outreach")
    assert not at.exception, at.exception
    assert at.warning[0].value == (
        "This campaign cannot be forecast: campaign alpha outreach has no steps"
    )
    # the other tenant's campaign is forecast as usual
    other = open_page("campaigns", tenant="bravo", campaign_page="bravo outreach")
    assert other.dataframe[1].value["total"].sum() == 3


def test_pausing_asks_first_then_pauses_and_resumes_through_the_engine(database, launched):
    alpha, _ = launched
    _analytics_run(database)
    campaign = str(alpha.campaign_id)
    at = open_page("campaigns", tenant="alpha", campaign_page="alpha outreach")
    assert "Status now: **active**" in at.markdown[-1].value
    at.button(key="operate").click().run()
    assert not at.exception, at.exception
    assert at.warning[0].value.startswith("Pause alpha outreach?")
    assert _live_status(database, campaign) == "active"  # nothing happens before the yes
    at.button(key="operate_cancel").click().run()
    assert not at.warning and _live_status(database, campaign) == "active"

    at.button(key="operate").click().run()
    at.button(key="operate_confirm").click().run()
    assert not at.exception, at.exception
    assert at.success[0].value == "alpha outreach is now paused."
    assert _live_status(database, campaign) == "paused"
    assert "Status now: **paused**" in at.markdown[-1].value
    assert at.button(key="operate").label == "Resume campaign"
    # the forecast (the last analytics run's) still shows: a paused campaign's is that of
    # its resuming
    assert at.dataframe[1].value["total"].sum() == 3

    at.button(key="operate").click().run()
    at.button(key="operate_confirm").click().run()
    assert at.success[0].value == "alpha outreach is now active."
    assert _live_status(database, campaign) == "active"


def test_the_operator_cannot_touch_another_tenants_campaign(database, launched):
    alpha, bravo = launched
    theirs = str(bravo.campaign_id)
    assert operate.live_status(str(alpha.tenant_id), theirs) is None
    with pytest.raises(CampaignError, match=f"this tenant has no campaign {theirs}"):
        operate.pause(str(alpha.tenant_id), theirs)
    assert _live_status(database, theirs) == "active"
    assert operate.pause(str(bravo.tenant_id), theirs) == "paused"  # its own tenant can


def test_a_campaign_that_cannot_be_resumed_says_why(database, launched):
    alpha, _ = launched
    with pytest.raises(CampaignError, match="the campaign is active; only a paused one"):
        operate.resume(str(alpha.tenant_id), str(alpha.campaign_id))


def test_an_unreachable_operator_role_says_which_password_it_needs(
    database, launched, monkeypatch, tmp_path
):
    alpha, _ = launched
    # a server that is not there: a socket folder nothing listens in
    monkeypatch.setenv("DATABASE_URL", f"postgresql://postgres@/penguin?host={tmp_path}")
    st.cache_resource.clear()
    with pytest.raises(operate.OperatorUnavailableError, match="PENGUIN_OPERATOR_PASSWORD"):
        operate.live_status(str(alpha.tenant_id), str(alpha.campaign_id))
