"""Analytics: the dbt project as Dagster assets, rebuilt after every successful send run."""

import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, DbtProject, dbt_assets
from filelock import FileLock

from engine.config import DBT_PROJECT_DIR
from orchestration.resources import PostgresResource
from orchestration.sending import send_due_job

_VENV_DBT = Path(sys.executable).with_name("dbt")
DBT_EXECUTABLE = str(_VENV_DBT) if _VENV_DBT.exists() else shutil.which("dbt") or "dbt"

dbt_project = DbtProject(project_dir=DBT_PROJECT_DIR)


def parse_dbt_project() -> None:
    """Write target/manifest.json with `dbt parse` (offline), one process at a time.

    dagster-dbt's own preparer would look for `dbt` on PATH; this uses the one installed
    beside this Python, so a venv works without being activated.
    """
    target = dbt_project.project_dir / dbt_project.target_path
    target.mkdir(parents=True, exist_ok=True)
    with FileLock(target / "parse.lock").acquire(timeout=120):
        DbtCliResource(project_dir=dbt_project, dbt_executable=DBT_EXECUTABLE).cli(
            ["parse", "--quiet"], target_path=dbt_project.target_path
        ).wait()


def manifest_is_stale() -> bool:
    """Whether the manifest is missing or older than a file of the project (after a pull)."""
    manifest = dbt_project.manifest_path
    if not manifest.exists():
        return True
    built = manifest.stat().st_mtime
    project = dbt_project.project_dir
    sources = [project / "dbt_project.yml", *(project / "models").rglob("*")]
    sources += (project / "macros").rglob("*")
    return any(path.stat().st_mtime > built for path in sources if path.is_file())


# Parse on every load under `dagster dev` (picks up model edits), and wherever the manifest
# is missing or older than the project's files (a fresh clone, a pull, tests).
if dbt_project.preparer.using_dagster_dev() or manifest_is_stale():
    parse_dbt_project()


class PenguinDbtTranslator(DagsterDbtTranslator):
    """Sources keep their table name as key (`sent_emails` is the sending asset); models
    live under `analytics/`."""

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> dg.AssetKey:
        if dbt_resource_props["resource_type"] == "source":
            return dg.AssetKey(dbt_resource_props["name"])
        return dg.AssetKey(["analytics", dbt_resource_props["name"]])

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        return "analytics"


@dbt_assets(
    manifest=dbt_project.manifest_path,
    project=dbt_project,
    dagster_dbt_translator=PenguinDbtTranslator(),
)
def analytics_models(
    context: dg.AssetExecutionContext, dbt: DbtCliResource, postgres: PostgresResource
):
    with postgres.dbt_environment():
        yield from dbt.cli(["build"], context=context).stream()


analytics_job = dg.define_asset_job(
    "analytics_job",
    selection=dg.AssetSelection.assets(analytics_models),
    description="dbt build: staging views, marts, and their tests.",
)

analytics_daily_schedule = dg.ScheduleDefinition(
    name="analytics_daily_schedule",
    job=analytics_job,
    cron_schedule="15 0 * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Rebuild the marts shortly after midnight, so every day closes.",
)


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[send_due_job],
    request_job=analytics_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Rebuilds the marts after each successful send run.",
)
def analytics_after_sends_sensor(context: dg.RunStatusSensorContext):
    return dg.RunRequest(run_key=f"after:{context.dagster_run.run_id}")


defs = dg.Definitions(
    assets=[analytics_models],
    jobs=[analytics_job],
    schedules=[analytics_daily_schedule],
    sensors=[analytics_after_sends_sensor],
    resources={"dbt": DbtCliResource(project_dir=dbt_project, dbt_executable=DBT_EXECUTABLE)},
)
