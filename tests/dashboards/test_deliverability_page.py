"""The Deliverability page, run for real (AppTest) on generated marts and on an empty one."""

from __future__ import annotations

import sqlalchemy as sa

from tests.dashboards.pages import open_page

_EXPECTED = sa.text(
    """
    select sum(bounced_hard) as hard, sum(bounced_soft) as soft, sum(complaints) as complaints,
           sum(unsubscribes) as unsubscribes
    from analytics_marts.tenant_daily
    where tenant_name = :t and send_date > current_date - :days
    """
)


def test_bounces_complaints_and_unsubscribes_add_up_by_period(use_database, generated):
    use_database(generated)
    for period, days in (("Last 30 days", 30), ("Last 90 days", 90)):
        at = open_page("deliverability", period=period)
        assert not at.exception, at.exception
        tenant = at.sidebar.selectbox(key="tenant").value
        with generated.analytics.connect() as conn:
            row = conn.execute(_EXPECTED, {"t": tenant, "days": days}).one()
        tiles = {m.label: m.value for m in at.metric}
        assert tiles["Hard bounces"] == f"{row.hard:,}"
        assert tiles["Soft bounces"] == f"{row.soft:,}"
        assert tiles["Complaints"] == f"{row.complaints:,}"
        assert tiles["Unsubscribes"] == f"{row.unsubscribes:,}"
        assert tiles["Machine-open share"].endswith("%")
        by_sender, by_domain = (frame.value for frame in at.dataframe)
        assert by_sender["bounced_hard"].sum() == row.hard
        assert by_domain["sent"].sum() > 0
        assert len(at.get("download_button")) == 2


def test_nothing_sent_says_there_is_nothing_to_bounce(use_database, generated):
    use_database(generated)
    at = open_page("deliverability", tenant="default")
    assert not at.exception, at.exception
    assert "nothing to bounce yet" in at.info[0].value
