"""dbt models built for real against the test database."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa

from engine.config import DBT_PROJECT_DIR
from engine.runtime import exported_environment
from engine.sending.scheduler import send_due
from tests.factories import seed_tenant

DBT = str(Path(sys.executable).with_name("dbt"))


def dbt(database, *args: str) -> str:
    env = {**os.environ, **exported_environment(database)}
    result = subprocess.run(
        [
            DBT,
            *args,
            "--project-dir",
            str(DBT_PROJECT_DIR),
            "--profiles-dir",
            str(DBT_PROJECT_DIR),
            "--target-path",
            str(database.settings.home / "dbt-target"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    return result.stdout


def _fct_count(database) -> int:
    with database.analytics.connect() as conn:
        return conn.execute(sa.text("select count(*) from analytics_marts.fct_sends")).scalar()


def test_incremental_run_picks_up_rows_committed_out_of_order(database, smtp_server, now, tmp_path):
    seed_tenant(database, "early", now, tmp_path)
    seed_tenant(database, "late", now, tmp_path, enroll=False)
    send_due(database.app, smtp_server.server(), now)
    dbt(database, "build")
    assert _fct_count(database) == 3

    # A worker whose batch clock is older than the newest loaded row commits afterwards.
    from engine.db import tenant_transaction
    from engine.enrollment import enroll_active_campaigns
    from engine.tenants import tenant_id

    late = tenant_id(database.app, "late")
    earlier = now - timedelta(minutes=30)
    with tenant_transaction(database.app, late) as conn:
        enroll_active_campaigns(conn, earlier)
    send_due(database.app, smtp_server.server(), earlier, tenants=[late])
    output = dbt(database, "build", "--select", "fct_sends+")
    assert "PASS=" in output
    assert _fct_count(database) == 6


def test_status_changes_after_the_first_load_are_merged(database, smtp_server, now, tmp_path):
    tenant = seed_tenant(database, "acme", now, tmp_path)
    smtp_server.handler.refuse["acme1@example.com"] = "451 4.3.0 Try later"
    send_due(database.app, smtp_server.server(), now)
    dbt(database, "build")
    del smtp_server.handler.refuse["acme1@example.com"]
    send_due(
        database.app, smtp_server.server(), now + timedelta(minutes=1), tenants=[tenant.tenant_id]
    )
    dbt(database, "build", "--select", "fct_sends+")
    with database.analytics.connect() as conn:
        statuses = conn.execute(
            sa.text("select send_status, count(*) from analytics_marts.fct_sends group by 1")
        ).all()
        daily = conn.execute(
            sa.text("select sent_count, pending_count from analytics_marts.campaign_daily")
        ).one()
    assert dict(statuses) == {"sent": 3}
    assert tuple(daily) == (3, 0)
