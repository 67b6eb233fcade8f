"""The `penguin` command, run as a user runs it."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from engine import migrate
from engine.config import PROJECT_ROOT

PENGUIN = str(Path(sys.executable).with_name("penguin"))


def run(args, env, **kwargs):
    return subprocess.run(
        [PENGUIN, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=kwargs.pop("cwd", PROJECT_ROOT),
        **kwargs,
    )


@pytest.fixture
def env(database):
    return {
        **os.environ,
        "DATABASE_URL": database.settings.database_url,
        "PENGUIN_HOME": str(database.settings.home),
        "COLUMNS": "200",
    }


def test_env_prints_exports_that_dbt_can_use(env):
    result = run(["env"], env)
    assert result.returncode == 0, result.stderr
    exports = dict(
        line.removeprefix("export ").split("=", 1) for line in result.stdout.splitlines()
    )
    assert shlex.split(exports["PENGUIN_HOME"])[0] == env["PENGUIN_HOME"]
    assert {
        "DATABASE_URL",
        "PENGUIN_PG_HOST",
        "PENGUIN_PG_DATABASE",
        "DAGSTER_HOME",
        "DO_NOT_TRACK",
    } <= set(exports)
    debug = subprocess.run(
        [
            "bash",
            "-c",
            f'eval "$({PENGUIN} env)" && "{Path(sys.executable).with_name("dbt")}" '
            "debug --project-dir dbt_project --profiles-dir dbt_project",
        ],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "All checks passed" in debug.stdout, debug.stdout + debug.stderr


def test_tenant_create_and_list(env):
    created = run(["tenant", "create", "acme"], env)
    assert created.returncode == 0 and "created tenant acme" in created.stdout
    again = run(["tenant", "create", "acme"], env)
    assert again.returncode == 0 and "already exists" in again.stdout
    listed = run(["tenant", "list"], env)
    assert [line.split()[0] for line in listed.stdout.splitlines()] == ["acme", "default"]


def test_invalid_tenant_name_is_refused_with_the_rule(env):
    result = run(["tenant", "create", "Not Valid"], env)
    assert result.returncode == 2
    assert "tenant name 'Not Valid' is not valid" in result.stderr


def test_unknown_tenant_names_the_fix(env):
    result = run(["send", "--tenant", "ghost"], env)
    assert result.returncode == 2
    assert "no tenant named 'ghost'; create it with `penguin tenant create ghost`" in result.stderr


def test_bad_port_setting_names_the_variable(env):
    result = run(["db", "upgrade"], {**env, "PENGUIN_SMTP_SINK_PORT": "twenty"})
    assert result.returncode == 2
    assert "PENGUIN_SMTP_SINK_PORT='twenty' is not a whole number" in result.stderr


def test_db_upgrade_reports_the_revision(env):
    result = run(["db", "upgrade"], env)
    assert result.returncode == 0
    head = migrate.head_revision()
    assert f"schema app is at revision {head} (head {head})" in result.stdout


def test_upload_reports_counts_and_rejects_download_as_csv(env, tmp_path):
    from tests.factories import write_csv

    path = write_csv(
        tmp_path / "leads.csv",
        [["ok@example.com", "Ok"], ["=bad", "Evil"], ["OK@example.com", "Again"]],
        header=["Work Mail", "Name"],
    )
    result = run(["upload", str(path), "--list", "leads", "--map", "Work Mail=email"], env)
    assert result.returncode == 0, result.stderr
    counts = dict(line.rsplit(None, 1) for line in result.stdout.splitlines()[1:9])
    assert counts == {
        "rows": "3",
        "new contacts": "1",
        "updated": "0",
        "unchanged": "0",
        "duplicates in file": "1",
        "rejected": "1",
        "suppressed (not emailed)": "0",
        "role addresses": "0",
    }
    batch = result.stdout.split()[1].rstrip(":")

    again = run(["upload", str(path), "--list", "leads", "--map", "Work Mail=email"], env)
    assert again.returncode == 0 and "already loaded" in again.stdout

    rejects = run(["uploads", "rejects", batch], env)
    assert rejects.returncode == 0, rejects.stderr
    header, row = rejects.stdout.splitlines()
    assert header == "line_number,reason,raw_row"
    assert row.startswith("3,email '=bad' is not valid") and row.endswith(',"\'=bad,Evil"')
    not_a_batch = run(["uploads", "rejects", "last-week"], env)
    assert not_a_batch.returncode == 2 and "'last-week' is not a batch id" in not_a_batch.stderr
    listed = run(["uploads", "list"], env)
    assert batch in listed.stdout and "completed" in listed.stdout


def test_upload_of_an_unusable_file_fails_with_the_reason(env, tmp_path):
    path = tmp_path / "names.csv"
    path.write_text("First,Last\nAda,Lovelace\n")
    result = run(["upload", str(path), "--list", "leads"], env)
    assert result.returncode == 1
    assert "no column looks like an email address; columns found: First, Last" in result.stderr
    missing = run(["upload", str(tmp_path / "nope.csv"), "--list", "leads"], env)
    assert missing.returncode == 1 and "no such file" in missing.stderr
    bad_map = run(["upload", str(path), "--list", "leads", "--map", "First"], env)
    assert bad_map.returncode == 1 and "COLUMN=FIELD" in bad_map.stderr
