"""The Campaigns page, run for real (AppTest) on generated marts and on an empty database."""

from __future__ import annotations

import sqlalchemy as sa

from tests.dashboards.pages import open_page


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
    assert [h.value for h in at.subheader] == [name, "Settings"]
    assert at.metric[0].label == "Sent"
    rows = at.dataframe[1].value
    settings = dict(zip(rows["setting"], rows["value"], strict=True))
    assert settings["campaign_name"] == name
    # another tenant's campaign in the URL opens nothing
    other = open_page("campaigns", tenant="default", campaign_page=name)
    assert not other.exception, other.exception
    assert [h.value for h in other.subheader] == []


def test_a_tenant_without_campaigns_is_told_how_to_make_one(empty_marts):
    at = open_page("campaigns")
    assert not at.exception, at.exception
    assert "has no campaigns yet" in at.info[0].value
