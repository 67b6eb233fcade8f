"""The uploads inbox through Dagster: the sensor's run keys, the run, its checks."""

from __future__ import annotations

import os
from datetime import UTC, datetime

import dagster as dg
import sqlalchemy as sa

from engine.inbox import drop
from orchestration import analytics, ingestion, sending
from orchestration.resources import PostgresResource
from tests.factories import write_csv


def _resources(database):
    return {
        "postgres": PostgresResource(
            database_url=database.settings.database_url, penguin_home=str(database.settings.home)
        )
    }


def _tick(database, instance, cursor=None):
    with dg.build_sensor_context(
        instance=instance, resources=_resources(database), cursor=cursor
    ) as context:
        result = ingestion.upload_inbox_sensor(context)
        return result, context.cursor


def _settled(path):
    os.utime(path, (path.stat().st_mtime - 60, path.stat().st_mtime - 60))
    return path


def _run(database, instance, path):
    return dg.materialize(
        [ingestion.uploads, sending.enrollments, *ingestion.defs.asset_checks],
        resources=_resources(database),
        instance=instance,
        run_config=dg.RunConfig(ops={"uploads": ingestion.UploadConfig(path=path)}),
        selection=["upload_batches", "contacts", "contact_lists"],
        raise_on_error=False,
    )


def _failure(result) -> str:
    """The message of the uploads step's failure."""
    [failure] = [e for e in result.all_events if e.is_step_failure]
    return failure.step_failure_data.user_failure_data.description


def test_a_dropped_file_is_requested_once_and_loaded_once(database, tmp_path):
    uploads = database.settings.uploads
    rows = [["ada@example.com", "Ada", "", "", ""], ["bad", "", "", "", ""]]
    with dg.instance_for_test() as instance:
        nothing, _ = _tick(database, instance)
        assert isinstance(nothing, dg.SkipReason)

        dropped = _settled(drop(uploads, write_csv(tmp_path / "a.csv", rows), "default", "vip"))
        [first], cursor = _tick(database, instance)
        [again], _ = _tick(database, instance, cursor)
        assert first.run_key == again.run_key  # a second tick maps to the same run
        assert first.run_key.startswith("upload:default/vip/")
        path = first.run_config["ops"]["uploads"]["config"]["path"]
        assert path == "default/vip/a.csv"
        # Its run refreshes the marts too: a refresh, labelled with today's partition.
        assert first.tags[analytics.REFRESH_TAG] == "refresh"
        today = datetime.now(UTC).date().isoformat()
        assert first.tags["dagster/asset_partition_range_start"] == today

        result = _run(database, instance, path)
        assert result.success
        assert not dropped.exists()
        checks = result.get_asset_check_evaluations()
        assert {c.check_name for c in checks if c.passed} == {
            "contacts_have_unique_addresses",
            "list_members_have_contacts",
        }
        # A retried run finds its file handled and changes nothing.
        assert _run(database, instance, path).success
        with database.owner.connect() as conn:
            batches = conn.execute(sa.text("select status from app.upload_batches")).all()
        assert batches == [("completed",)]

        # The same name and content dropped again gets a run of its own (the sensor moves
        # nothing), which finds the content loaded and moves the file to processed/.
        again_dropped = _settled(
            drop(uploads, write_csv(tmp_path / "b.csv", rows), "default", "vip", name="a.csv")
        )
        [second], _ = _tick(database, instance)
        assert second.run_key != first.run_key and again_dropped.exists()
        assert _run(database, instance, path).success
        assert not again_dropped.exists()
        assert len(list((uploads / "processed" / "default" / "vip").glob("*a*.csv"))) == 2
        with database.owner.connect() as conn:
            batches = conn.execute(sa.text("select status from app.upload_batches")).all()
        assert batches == [("completed",)]


def test_the_sensor_only_requests_and_a_file_with_broken_instructions_fails_its_run(
    database, tmp_path
):
    uploads = database.settings.uploads
    with dg.instance_for_test() as instance:
        good = _settled(
            drop(
                uploads,
                write_csv(tmp_path / "a.csv", [["a@example.com"]], ["Email"]),
                "default",
                "l",
            )
        )
        bad = _settled(
            drop(
                uploads,
                write_csv(tmp_path / "b.csv", [["b@example.com"]], ["Email"]),
                "default",
                "l",
            )
        )
        bad.with_name(".b.csv.upload.json").write_text("{not json")
        requests, _ = _tick(database, instance)
        paths = sorted(r.run_config["ops"]["uploads"]["config"]["path"] for r in requests)
        assert paths == ["default/l/a.csv", "default/l/b.csv"]
        assert good.exists() and bad.exists()  # the tick moved nothing

        result = _run(database, instance, "default/l/b.csv")
        assert not result.success  # the run of a file that failed reads FAILURE
        [failed] = (uploads / "failed" / "default" / "l").glob("*b.csv")
        reason = failed.with_name(failed.name + ".error.txt").read_text()
        assert ".b.csv.upload.json, the instructions beside the file, is not valid JSON" in reason
        assert _failure(result).startswith("1 of 1 file(s) could not be loaded: default/l/b.csv: ")
        assert "is not valid JSON" in _failure(result)
        assert good.exists()
        assert _run(database, instance, "default/l/a.csv").success and not good.exists()
