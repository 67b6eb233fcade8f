"""The dbt models lint clean under the project's sqlfluff configuration (postgres, the dbt
templater), as `make lint` runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from engine.config import DBT_PROJECT_DIR
from engine.runtime import exported_environment
from tests.factories import dbt

SQLFLUFF = Path(sys.executable).parent / "sqlfluff"


def test_the_models_lint_clean_before_and_after_a_build(database):
    """The templater renders what dbt would build next: the first build before any marts
    exist, the incremental branches once they do (`make lint` on a running install)."""
    for state in ("first build", "incremental"):
        result = subprocess.run(
            [str(SQLFLUFF), "lint", "models", "--processes", "2", "--disable-progress-bar"],
            cwd=DBT_PROJECT_DIR,
            env={**os.environ, **exported_environment(database)},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
        assert "Project Compiled" in result.stdout + result.stderr
        if state == "first build":
            dbt(database, "build", "--exclude-resource-type", "unit_test")


def test_a_model_that_breaks_the_rules_fails_the_lint(database, tmp_path):
    """The check can fail: the same configuration on a copy of the project with a model in
    upper case and a line too long."""
    import shutil

    project = tmp_path / "dbt_project"
    shutil.copytree(DBT_PROJECT_DIR, project, ignore=shutil.ignore_patterns("target", "logs"))
    (project / "models" / "staging" / "stg_bad.sql").write_text(
        "SELECT ID AS tenant_id, "
        + ", ".join(f"name as c{i}" for i in range(12))
        + " FROM {{ source('app', 'tenants') }}\n"
    )
    result = subprocess.run(
        [str(SQLFLUFF), "lint", "models/staging/stg_bad.sql", "--disable-progress-bar"],
        cwd=project,
        env={**os.environ, **exported_environment(database)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "CP01" in result.stdout and "LT05" in result.stdout, result.stdout
