"""The Dagster code location loads, validates, and its sensors decide sensibly."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

import dagster as dg

from engine.config import PROJECT_ROOT
from engine.sending.scheduler import send_due
from orchestration import analytics
from orchestration.definitions import defs
from orchestration.resources import PostgresResource, SmtpResource
from orchestration.sending import due_sends_sensor
from tests.factories import seed_tenant


def test_definitions_validate_with_the_dagster_cli():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dagster",
            "definitions",
            "validate",
            "-w",
            str(PROJECT_ROOT / "workspace.yaml"),
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "DAGSTER_DISABLE_TELEMETRY": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Validation successful" in result.stdout + result.stderr


def test_every_stage_is_an_asset_or_job_in_the_ui():
    repo = defs.get_repository_def()
    keys = {key.to_user_string() for key in repo.asset_graph.get_all_asset_keys()}
    assert {
        "contacts",
        "enrollments",
        "sent_emails",
        "analytics/stg_app__sent_emails",
        "analytics/fct_sends",
        "analytics/campaign_daily",
    } <= keys
    assert {"send_due_job", "analytics_job"} <= {job.name for job in repo.get_all_jobs()}
    assert "due_sends_sensor" in {s.name for s in repo.sensor_defs}
    # The dbt source app.sent_emails is the sending asset: one lineage from CSV to marts.
    stg = repo.asset_graph.get(dg.AssetKey(["analytics", "stg_app__sent_emails"]))
    assert dg.AssetKey("sent_emails") in stg.parent_keys


def test_the_daily_marts_are_partitioned_by_day_and_the_rest_are_not():
    """Facts and per-day models are daily-partitioned assets (a backfill from the UI), with
    the staging views they read; the dimensions, upload and forecast marts are not, and only
    follow them; `analytics_job` carries both, in two steps, the send forecasts between them."""
    repo = defs.get_repository_def()
    graph = repo.asset_graph
    daily = {"fct_sends", "fct_email_events", "campaign_daily", "step_daily", "sender_daily"}
    daily |= {"recipient_domain_daily", "tenant_daily", "engagement_daily", "campaign_sender_daily"}
    daily |= {"step_variant_daily"}
    marts = {k for k in graph.get_all_asset_keys() if k.path[0] == "analytics"}
    partitioned = {k.path[-1] for k in marts if graph.get(k).partitions_def is not None}
    assert {k for k in partitioned if not k.startswith("stg_")} == daily
    unpartitioned = {k.path[-1] for k in marts} - partitioned
    assert {"dim_contacts", "dim_campaigns", "fct_upload_batches", "step_funnel"} <= unpartitioned
    # One step (one `dbt build`) for each: the dimensions only follow the partitioned models;
    # the forecasts, dbt's sources of the forecast marts, come between: the daily models read
    # nothing of them, and run first when both could (the step priority).
    job = repo.get_job("analytics_job")
    assert len(job.graph.nodes) == 3
    forecasts = {dg.AssetKey(k) for k in analytics.FORECASTS}
    for key in forecasts:
        assert graph.get(key).partitions_def is None
    for name in ("stg_app__send_forecasts", "stg_app__send_forecast_days"):
        assert name in unpartitioned
        assert (
            dg.AssetKey(name.removeprefix("stg_app__"))
            in graph.get(dg.AssetKey(["analytics", name])).parent_keys
        )
    upstream = graph.get_ancestor_asset_keys(dg.AssetKey(["analytics", "campaign_daily"]))
    assert not upstream & forecasts
    priority = {n.name: int(n.tags.get("dagster/priority", 0)) for n in job.graph.nodes}
    assert priority["analytics_daily"] > priority["send_forecasts"]
    partitions = graph.get(dg.AssetKey(["analytics", "fct_sends"])).partitions_def
    assert isinstance(partitions, dg.DailyPartitionsDefinition)
    assert repo.get_job("analytics_job").asset_layer.selected_asset_keys == marts | forecasts


def test_the_upload_run_refreshes_the_marts_a_send_run_leaves_them_to_the_sensor():
    """One run start from an upload to updated dashboards: the upload run carries the dbt
    models (a partitioned job, its runs tagged as refreshes); a send run only sends, and the
    freshness sensor follows. Every job runs its steps in its own process; the sending engine
    and dbt are in the pools the instance limits to one run each."""
    repo = defs.get_repository_def()
    campaign_daily = dg.AssetKey(["analytics", "campaign_daily"])
    assert repo.get_job("send_due_job").asset_layer.selected_asset_keys == {
        dg.AssetKey("sent_emails")
    }
    upload = repo.get_job("ingest_upload_job")
    assert {
        dg.AssetKey("sent_emails"),
        dg.AssetKey("send_forecasts"),
        campaign_daily,
    } <= upload.asset_layer.selected_asset_keys
    assert upload.partitions_def == analytics.ANALYTICS_DAYS
    assert (
        upload.tags["penguin/dbt"] == "build"
        and "penguin/dbt" not in repo.get_job("send_due_job").tags
    )
    for job in repo.get_all_jobs():
        assert job.executor_def.name == dg.in_process_executor.name, job.name
    pools = {n.name: n.definition.pool for n in upload.graph.nodes}
    assert pools["sent_emails"] == "sends"
    assert {p for n, p in pools.items() if n.startswith("analytics")} == {"dbt"}
    nodes = repo.get_job("analytics_job").graph.nodes
    assert {n.definition.pool for n in nodes if n.name.startswith("analytics")} == {"dbt"}


def _evaluate(database, instance):
    resources = {
        "postgres": PostgresResource(
            database_url=database.settings.database_url, penguin_home=str(database.settings.home)
        ),
        "smtp": SmtpResource(),
    }
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        return due_sends_sensor(context)


def test_due_sends_sensor_requests_a_run_only_when_sends_are_due(
    database, smtp_server, tmp_path, now
):
    with dg.instance_for_test() as instance:
        nothing = _evaluate(database, instance)
        assert isinstance(nothing, dg.SkipReason)

        # Enrolled "now" by the fake clock, which is in the past for the sensor's wall clock.
        seed_tenant(database, "acme", now - timedelta(days=1), tmp_path)
        first = _evaluate(database, instance)
        again = _evaluate(database, instance)
        assert isinstance(first, dg.RunRequest)
        assert first.run_key == again.run_key  # a repeated tick is harmless
        assert ":3" in first.run_key

        # While the run it asked for is queued or under way, a tick that sees the same due
        # set asks for the same key (Dagster runs it once); once that run has failed, the
        # same due set is requested again under a new key.
        job = defs.resolve_job_def("send_due_job")
        run = instance.create_run_for_job(job_def=job)
        assert _evaluate(database, instance).run_key == first.run_key
        instance.report_run_failed(run)
        retry = _evaluate(database, instance)
        assert isinstance(retry, dg.RunRequest) and retry.run_key != first.run_key

        send_due(database.app, smtp_server.server(), now)
        after = _evaluate(database, instance)
        assert isinstance(after, dg.SkipReason)
