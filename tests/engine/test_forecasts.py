"""Stored send forecasts (`engine.forecasts`): what every analytics run keeps of each campaign's
forecast, on a real database."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import sqlalchemy as sa

from engine.campaigns import Step, create_campaign, launch_campaign, pause_campaign
from engine.db import tenant_transaction
from engine.enrollment import enroll_active_campaigns
from engine.forecasts import FORECAST_DAYS, refresh_all_tenants, refresh_forecasts
from engine.ingest import ingest_file
from engine.senders import set_sender_active
from engine.sequence.forecast import forecast
from tests.factories import people, seed_tenant, write_csv

_STORED = sa.text(
    """
    select f.tenant_id, f.forecast_at, f.kept_at, f.summary, f.notes, f.error, f.last_day,
           coalesce(sum(d.messages), 0) as messages, count(d.day) as day_rows
    from app.send_forecasts f
    left join app.send_forecast_days d using (tenant_id, campaign_id)
    where f.campaign_id = :id
    group by f.tenant_id, f.forecast_at, f.kept_at, f.summary, f.notes, f.error, f.last_day
    """
)


def _stored(database, campaign_id):
    with database.owner.connect() as conn:
        return conn.execute(_STORED, {"id": campaign_id}).one_or_none()


def test_each_campaigns_stored_forecast_is_the_engines_and_a_refresh_replaces_it(
    database, now, tmp_path
):
    alpha = seed_tenant(database, "alpha", now, tmp_path)
    reports = refresh_all_tenants(database.app, now)
    assert reports["alpha"].campaigns == 1 and reports["alpha"].failed == {}
    with tenant_transaction(database.app, alpha.tenant_id) as conn:
        expected = forecast(conn, alpha.campaign_id, now, days=FORECAST_DAYS)
    row = _stored(database, alpha.campaign_id)
    assert row.error is None
    assert row.forecast_at == now
    assert row.messages == expected.total == reports["alpha"].messages == 3
    assert row.day_rows == FORECAST_DAYS * len(expected.steps)  # zero days included
    assert row.summary == expected.summary()
    assert tuple(row.notes) == expected.notes
    assert row.last_day == expected.last_day

    later = now + timedelta(hours=1)
    refresh_all_tenants(database.app, later)
    again = _stored(database, alpha.campaign_id)
    assert again.forecast_at == later and again.day_rows == row.day_rows  # replaced, not added
    # a campaign deleted takes its forecast with it
    with database.owner.begin() as conn:
        conn.execute(sa.text("delete from app.campaigns where id = :id"), {"id": alpha.campaign_id})
    assert _stored(database, alpha.campaign_id) is None


def test_a_campaign_that_cannot_be_forecast_stores_why_and_the_others_go_on(
    database, now, tmp_path
):
    alpha = seed_tenant(database, "alpha", now, tmp_path)
    with tenant_transaction(database.app, alpha.tenant_id) as conn:
        second = create_campaign(
            conn,
            "alpha follow-up",
            now,
            list_name="leads",
            sender_id=alpha.sender_id,
            steps=[Step("email", subject="Again", body_text="Hello again")],
        )
        launch_campaign(conn, second, now)
        enroll_active_campaigns(conn, now)
    # the first campaign's only step is removed under its enrollments: nothing to run
    with database.owner.begin() as conn:
        conn.execute(
            sa.text("update app.campaign_steps set removed_at = :now where campaign_id = :id"),
            {"now": now, "id": alpha.campaign_id},
        )
    with tenant_transaction(database.app, alpha.tenant_id) as conn:
        report = refresh_forecasts(conn, now)
    assert report.campaigns == 2
    assert list(report.failed) == ["alpha outreach"]
    assert report.failed["alpha outreach"] == "campaign alpha outreach has no steps"
    broken = _stored(database, alpha.campaign_id)
    assert broken.error == "campaign alpha outreach has no steps" and broken.day_rows == 0
    assert broken.summary == "This campaign cannot be forecast."
    healthy = _stored(database, second)
    assert healthy.error is None and healthy.messages == 3


def test_a_tenants_refresh_writes_and_replaces_its_own_forecasts_only(database, now, tmp_path):
    alpha = seed_tenant(database, "alpha", now, tmp_path)
    bravo = seed_tenant(database, "bravo", now, tmp_path)
    refresh_all_tenants(database.app, now)
    before = _stored(database, bravo.campaign_id)
    with tenant_transaction(database.app, alpha.tenant_id) as conn:
        assert refresh_forecasts(conn, now + timedelta(hours=1)).campaigns == 1
        seen = conn.execute(sa.text("select distinct tenant_id from app.send_forecasts"))
        assert seen.scalars().all() == [alpha.tenant_id]
    assert _stored(database, bravo.campaign_id) == before  # bravo's is untouched
    assert _stored(database, alpha.campaign_id).tenant_id == alpha.tenant_id


def test_a_recent_forecast_of_an_unchanged_campaign_is_kept_until_it_ages_or_changes(
    database, now, tmp_path
):
    """`every`: within it, a campaign whose definition is unchanged keeps its forecast (no
    simulation); `every` passing, a pause, an upload to its list, its sender paused (even by a
    host whose clock is behind) or the campaign's next local day make a new one."""
    alpha = seed_tenant(database, "alpha", now, tmp_path)
    every = timedelta(minutes=5)

    def refresh(at):
        with tenant_transaction(database.app, alpha.tenant_id) as conn:
            return refresh_forecasts(conn, at, every=every)

    def simulated(at) -> bool:
        report = refresh(at)
        assert report.campaigns + report.kept == 1
        return report.campaigns == 1

    assert simulated(now)
    kept = refresh(now + timedelta(minutes=4))
    assert (kept.campaigns, kept.kept, kept.messages) == (0, 1, 0)
    row = _stored(database, alpha.campaign_id)
    # untouched, and marked: the freshness sensor asks for a run once it is `every` old
    assert (row.forecast_at, row.kept_at) == (now, now + timedelta(minutes=4))

    made = now + timedelta(minutes=5)
    assert simulated(made)  # `every` old: simulated again, and no longer marked
    assert tuple(_stored(database, alpha.campaign_id)[1:3]) == (made, None)

    with tenant_transaction(database.app, alpha.tenant_id) as conn:
        pause_campaign(conn, alpha.campaign_id, made + timedelta(minutes=1))
    assert simulated(made + timedelta(minutes=2))
    row = _stored(database, alpha.campaign_id)
    assert "The campaign is paused: forecast as if resumed now." in row.notes
    assert not simulated(made + timedelta(minutes=3))

    # two more contacts on its list: the forecast counts them at once
    before = _stored(database, alpha.campaign_id).messages
    csv = write_csv(tmp_path / "more.csv", people("more", 2))
    ingest_file(database.app, alpha.tenant_id, csv, alpha.list_name, made + timedelta(minutes=3))
    assert simulated(made + timedelta(minutes=4))
    assert _stored(database, alpha.campaign_id).messages == before + 2

    # its sender paused from a host whose clock is an hour behind: still a change
    made = made + timedelta(minutes=4)
    with tenant_transaction(database.app, alpha.tenant_id) as conn:
        set_sender_active(conn, "sales@alpha.example", False, made - timedelta(hours=1))
    assert simulated(made + timedelta(minutes=1))
    assert "paused" in " ".join(_stored(database, alpha.campaign_id).notes)

    # a forecast made before the campaign's midnight (UTC) does not stand after it
    midnight = datetime.combine(made.date() + timedelta(days=1), time(0), UTC)
    assert simulated(midnight - timedelta(minutes=1))
    assert simulated(midnight + timedelta(minutes=1))
    # every=0 (the default) always simulates; a clock that went back too
    with tenant_transaction(database.app, alpha.tenant_id) as conn:
        assert refresh_forecasts(conn, midnight + timedelta(minutes=2)).campaigns == 1
    assert simulated(midnight)
