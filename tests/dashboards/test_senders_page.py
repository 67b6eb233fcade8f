"""The Senders page, run for real (AppTest) on generated marts and on an empty database."""

from __future__ import annotations

import sqlalchemy as sa

from tests.dashboards.pages import open_page


def test_each_sender_shows_its_volume_against_its_limit(use_database, generated):
    use_database(generated)
    at = open_page("senders")
    assert not at.exception, at.exception
    tenant = at.sidebar.selectbox(key="tenant").value
    with generated.analytics.connect() as conn:
        expected = {
            row.sender_email: (row.daily_limit, row.sent or 0, row.busiest or 0)
            for row in conn.execute(
                sa.text(
                    """
                    select s.sender_email, s.daily_limit,
                           sum(d.sent) filter (where d.send_date > current_date - 30) as sent,
                           max(d.sent) filter (where d.send_date > current_date - 30) as busiest
                    from analytics_marts.dim_senders s
                    left join analytics_marts.sender_daily d using (sender_account_id)
                    where s.tenant_name = :t group by 1, 2
                    """
                ),
                {"t": tenant},
            )
        }
    table = at.dataframe[0].value
    shown = {
        row["sender_email"]: (row["daily_limit"], row["sent"] or 0, row["busiest_day_sent"])
        for _, row in table.iterrows()
    }
    assert shown == expected
    assert len(shown) > 1
    # a sender filter in the URL (the address, as the picker shows it) keeps that one
    first = sorted(expected)[0]
    one = open_page("senders", tenant=tenant, sender=first).dataframe[0].value
    assert list(one["sender_email"]) == [first]


def test_a_tenant_without_senders_is_told_how_to_add_one(empty_marts):
    at = open_page("senders")
    assert not at.exception, at.exception
    assert "has no sender accounts yet" in at.info[0].value
