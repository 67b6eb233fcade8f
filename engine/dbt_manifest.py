"""The dbt project's manifest (`dbt_project/target/manifest.json`), parsed once.

Dagster's dbt assets are defined from the manifest, so every process that loads the
definitions (code server, and each run's worker) needs it; parsing it in each of them cost
several seconds per run. `penguin up` parses before it starts Dagster; a process that finds
the manifest missing or older than the project's files (a fresh clone, a pull, `dagster dev`
started by hand) parses it once, under a lock, and every other process then finds it fresh.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from filelock import FileLock

from engine.config import DBT_PROJECT_DIR

TARGET = DBT_PROJECT_DIR / "target"
MANIFEST = TARGET / "manifest.json"
_VENV_DBT = Path(sys.executable).with_name("dbt")

#: `dbt build` as Dagster runs it (and the dbt benchmark): the models and their data tests. The
#: unit tests check the models' logic on fixed inputs; they run where the logic changes (`dbt
#: build` by hand, CI).
BUILD = ["build", "--exclude-resource-type", "unit_test"]


def dbt_executable() -> str:
    """The dbt installed beside this Python, so a venv works without being activated."""
    import shutil

    return str(_VENV_DBT) if _VENV_DBT.exists() else shutil.which("dbt") or "dbt"


def is_stale(project: Path = DBT_PROJECT_DIR, manifest: Path = MANIFEST) -> bool:
    """Whether the manifest is missing or older than a file of the project."""
    if not manifest.exists():
        return True
    built = manifest.stat().st_mtime
    sources = [project / "dbt_project.yml", *(project / "models").rglob("*")]
    sources += (project / "macros").rglob("*")
    return any(path.stat().st_mtime > built for path in sources if path.is_file())


def parse(env: Mapping[str, str], log: Path | None = None) -> bool:
    """`dbt parse` (offline) unless another process has just done it; returns success.

    `env` is dbt's whole environment (profiles.yml reads the server's coordinates from it).
    """
    TARGET.mkdir(parents=True, exist_ok=True)
    with FileLock(TARGET / "parse.lock").acquire(timeout=300):
        if not is_stale():  # parsed by another process while this one waited
            return True
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
        with open(log or "/dev/null", "ab") as out:
            result = subprocess.run(
                [
                    dbt_executable(),
                    "parse",
                    "--quiet",
                    "--project-dir",
                    str(DBT_PROJECT_DIR),
                    "--profiles-dir",
                    str(DBT_PROJECT_DIR),
                    "--target-path",
                    str(TARGET),
                ],
                cwd=DBT_PROJECT_DIR,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
            )
    return result.returncode == 0
