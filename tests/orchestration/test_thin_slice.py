"""One thin slice through every stage, through Dagster and dbt, against real services."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

#: With pytest-xdist, the tests of the session's `built_pipeline` share one worker, which
#: builds it once.
pytestmark = pytest.mark.xdist_group("built_pipeline")


def _metadata(result, key: str) -> dict:
    [materialization] = [
        m for m in result.get_asset_materialization_events() if m.asset_key.path == [key]
    ]
    metadata = materialization.step_materialization_data.materialization.metadata
    return {k: v.value for k, v in metadata.items()}


def test_every_stage_materializes(built_pipeline):
    result = built_pipeline.result
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    batches = _metadata(result, "upload_batches")
    assert (batches["files"], batches["inserted"], batches["rejected"]) == (1, 40, 1)
    assert _metadata(result, "contacts")["dagster/row_count"] == 40
    assert _metadata(result, "contact_lists")["members"] == 40
    assert _metadata(result, "enrollments")["new_enrollments"] == 40
    assert _metadata(result, "sent_emails")["sent"] == 40


def test_the_smtp_server_received_every_email(built_pipeline):
    messages = built_pipeline.smtp.messages
    assert len(messages) == 40
    assert len({m["To"] for m in messages}) == 40
    assert all(m["Subject"].startswith("Hello ") for m in messages)


def test_the_mart_holds_the_days_sends(built_pipeline):
    with built_pipeline.database.analytics.connect() as conn:
        rows = conn.execute(
            sa.text(
                "select send_date, tenant_name, campaign_name, sent "
                "from analytics_marts.campaign_daily"
            )
        ).all()
        # The UTC day the messages went out (the run may have crossed midnight since).
        sent_day = conn.execute(
            sa.text("select (max(sent_at) at time zone 'UTC')::date from app.sent_emails")
        ).scalar_one()
    assert sent_day in (datetime.now(UTC).date(), datetime.now(UTC).date() - timedelta(days=1))
    assert [tuple(r) for r in rows] == [(sent_day, "demo", "Welcome to PenguinMails", 40)]


def test_dbt_tests_ran_as_asset_checks(built_pipeline):
    checks = built_pipeline.result.get_asset_check_evaluations()
    assert len(checks) >= 15
    assert all(check.passed for check in checks), [c.check_name for c in checks if not c.passed]
