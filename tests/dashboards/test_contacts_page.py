"""The Contacts page, run for real (AppTest) on generated marts and on an empty database."""

from __future__ import annotations

import sqlalchemy as sa

from tests.dashboards.pages import open_page


def test_statuses_leads_and_suppressions_come_from_the_marts(use_database, generated):
    use_database(generated)
    at = open_page("contacts", period="Last 90 days")
    assert not at.exception, at.exception
    tenant = at.sidebar.selectbox(key="tenant").value
    with generated.analytics.connect() as conn:
        statuses = dict(
            conn.execute(
                sa.text(
                    "select contact_status, count(*) from analytics_marts.dim_contacts "
                    "where tenant_id = (select tenant_id from analytics_marts.dim_tenants "
                    "where tenant_name = :t) group by 1"
                ),
                {"t": tenant},
            ).all()
        )
        top = conn.execute(
            sa.text(
                "select max(engagement_score) from analytics_marts.dim_contacts "
                "where tenant_id = (select tenant_id from analytics_marts.dim_tenants "
                "where tenant_name = :t)"
            ),
            {"t": tenant},
        ).scalar_one()
        reasons = dict(
            conn.execute(
                sa.text(
                    "select suppression_reason, count(*) from analytics_marts.fct_suppressions "
                    "where tenant_name = :t and suppressed_date > current_date - 90 group by 1"
                ),
                {"t": tenant},
            ).all()
        )
    assert {m.label: m.value for m in at.metric} == {
        status.title(): f"{count:,}" for status, count in statuses.items()
    }
    leads, suppressed = (frame.value for frame in at.dataframe)
    assert leads["engagement_score"].iloc[0] == top
    assert list(leads["engagement_score"]) == sorted(leads["engagement_score"], reverse=True)
    assert dict(zip(suppressed["reason"], suppressed["suppressions"], strict=True)) == reasons
    assert len(at.get("arrow_vega_lite_chart") or at.get("vega_lite_chart")) == 2
    assert len(at.get("download_button")) == 2


def test_a_tenant_without_contacts_is_told_to_upload_some(empty_marts):
    at = open_page("contacts")
    assert not at.exception, at.exception
    assert "has no contacts yet" in at.info[0].value
