"""Analytics: the dbt project as Dagster assets.

The marts are rebuilt in the same run as the sends they count (`send_due_job`, and the upload
run), not by a run of their own: one run start less between a send and the dashboards. All
dbt builds share the pool `dbt` (limit 1 in the instance `penguin up` writes), because two at
once fail with "relation already exists".
"""

import os
from collections.abc import Mapping
from typing import Any

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, DbtProject, dbt_assets

from engine import dbt_manifest
from engine.config import DBT_PROJECT_DIR
from orchestration.resources import PostgresResource

DBT_EXECUTABLE = dbt_manifest.dbt_executable()
#: The pool of every dbt build (see the module docstring).
DBT_POOL = "dbt"
#: The dbt models (all keyed under `analytics/`): what a run that sends rebuilds after sending.
MARTS = dg.AssetSelection.key_prefixes("analytics")
#: Run tag of every job that builds the marts: the run queue starts one such run at a time
#: (`tag_concurrency_limits` in the instance `penguin up` writes). The pool alone let two
#: runs submitted at once start together on a fresh instance; it still covers materializations
#: started by hand, which carry no job tags.
DBT_TAGS = {"penguin/dbt": "build"}

dbt_project = DbtProject(project_dir=DBT_PROJECT_DIR)

# `penguin up` parses before Dagster starts, so its processes find the manifest fresh and skip
# this. Only a process that finds it missing or older than the project's files (a fresh clone,
# a pull, a model edited under `dagster dev` by hand) parses, once, under a lock.
if dbt_manifest.is_stale() and not dbt_manifest.parse(os.environ):
    raise RuntimeError(
        f"`dbt parse` of {DBT_PROJECT_DIR} failed; run it by hand to see why: "
        f"cd {DBT_PROJECT_DIR} && dbt parse --profiles-dir ."
    )


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
    pool=DBT_POOL,
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
    tags=DBT_TAGS,
)

analytics_daily_schedule = dg.ScheduleDefinition(
    name="analytics_daily_schedule",
    job=analytics_job,
    cron_schedule="15 0 * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Rebuild the marts shortly after midnight, so every day closes.",
)


defs = dg.Definitions(
    assets=[analytics_models],
    jobs=[analytics_job],
    schedules=[analytics_daily_schedule],
    resources={"dbt": DbtCliResource(project_dir=dbt_project, dbt_executable=DBT_EXECUTABLE)},
)
