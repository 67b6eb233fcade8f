"""The `penguin` command, run as a user runs it."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from engine import migrate
from engine.config import PROJECT_ROOT
from tests.factories import PENGUIN
from tests.factories import run_penguin as run


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
    result = run(["db", "upgrade"], {**env, "PENGUIN_ANALYTICS_INTERVAL": "0"})
    assert result.returncode == 2
    assert "PENGUIN_ANALYTICS_INTERVAL=0 is not a number of seconds (1-86400)" in result.stderr


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


# -- Outside a migrated database (issue 8, item 10) ---------------------------------------


def _embedded_env(home: Path) -> dict[str, str]:
    """A `penguin` environment with no DATABASE_URL: the embedded server under `home`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PENGUIN_")}
    env.pop("DATABASE_URL", None)
    return {**env, "PENGUIN_HOME": str(home), "COLUMNS": "200"}


def _server_answers(home: Path) -> bool:
    """Whether the embedded server under `home` takes a connection (through its socket)."""
    import sqlalchemy as sa

    from engine.db import sqlalchemy_url

    pid_file = home / "pgdata" / "postmaster.pid"
    if not pid_file.exists():
        return False
    lines = pid_file.read_text().splitlines()
    url = sqlalchemy_url(f"postgresql://postgres@/postgres?host={lines[4]}&port={lines[3]}")
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("select 1")).scalar_one() == 1
    except sa.exc.OperationalError:
        return False
    finally:
        engine.dispose()


def test_a_command_on_an_unmigrated_database_says_to_run_db_upgrade(tmp_path):
    home = tmp_path / "home"
    result = run(["tenant", "list"], _embedded_env(home))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "has no PenguinMails schema yet; run `penguin db upgrade` first" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2  # one message, wrapped at most once


def test_a_command_on_an_older_schema_says_to_upgrade(pg_server, tmp_path):
    import sqlalchemy as sa

    from engine.config import Settings
    from engine.db import Database, sqlalchemy_url

    admin = sa.create_engine(sqlalchemy_url(pg_server), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text("create database cli_old_schema"))
    admin.dispose()
    url = sqlalchemy_url(pg_server).set(database="cli_old_schema").render_as_string(False)
    db = Database(Settings(home=tmp_path / "home", database_url=url))
    migrate.upgrade(db, "0003")
    db.dispose()
    env = {**os.environ, "DATABASE_URL": url, "PENGUIN_HOME": str(tmp_path), "COLUMNS": "200"}
    result = run(["tenant", "list"], env)
    assert result.returncode == 1
    head = migrate.head_revision()
    assert f"is at schema revision 0003, this version of penguin needs {head}" in result.stderr
    assert "run `penguin db upgrade`" in result.stderr and "Traceback" not in result.stderr


def test_an_unreachable_server_is_named_in_one_line_without_its_password(tmp_path):
    from tests.conftest import free_port

    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": f"postgresql://owner:hunter2secret@127.0.0.1:{port}/penguin",
        "PENGUIN_HOME": str(tmp_path),
        "COLUMNS": "200",
    }
    result = run(["tenant", "list"], env)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(
        f"error: cannot reach PostgreSQL (127.0.0.1:{port}, database penguin, from DATABASE_URL): "
    )
    assert "refused" in line.lower()
    assert "hunter2secret" not in result.stderr + result.stdout


def test_penguin_home_defaults_to_the_user_folder_unless_the_directory_has_a_penguin_folder(
    tmp_path, monkeypatch
):
    from engine.config import Settings

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    elsewhere = tmp_path / "somewhere"
    elsewhere.mkdir()
    assert Settings.from_env({}, cwd=elsewhere).home == tmp_path / "data" / "penguinmails"
    (elsewhere / ".penguin").mkdir()
    assert Settings.from_env({}, cwd=elsewhere).home == elsewhere / ".penguin"
    assert Settings.from_env({"PENGUIN_HOME": str(tmp_path / "x")}).home == tmp_path / "x"


# -- The embedded server's life (issue 8, item 11) ----------------------------------------


def test_env_keeps_the_embedded_server_up_across_other_commands_until_db_stop(tmp_path):
    home = tmp_path / "home"
    env = _embedded_env(home)
    exported = run(["env"], env)
    assert exported.returncode == 0, exported.stderr
    assert _server_answers(home)
    # Other commands attach to the server and leave; it stays up for the exports' sake.
    assert run(["db", "upgrade"], env).returncode == 0
    assert run(["tenant", "list"], env).returncode == 0
    assert _server_answers(home)

    stopped = run(["db", "stop"], env)
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped the embedded PostgreSQL" in stopped.stdout
    assert not _server_answers(home)
    assert "is not running" in run(["db", "stop"], env).stdout


def _settings_of(home: Path) -> dict[str, str]:
    import sqlalchemy as sa

    from engine.db import sqlalchemy_url
    from engine.embedded import SERVER_SETTINGS

    lines = (home / "pgdata" / "postmaster.pid").read_text().splitlines()
    url = sqlalchemy_url(f"postgresql://postgres@/postgres?host={lines[4]}&port={lines[3]}")
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return {
                name: conn.execute(sa.text(f"show {name}")).scalar() for name in SERVER_SETTINGS
            }
    finally:
        engine.dispose()


def _eventually_settings_of(home: Path, expected: dict[str, str]) -> dict[str, str]:
    """The settings, once the server has loaded them (a reload is signalled, not waited for)."""
    import time

    deadline = time.monotonic() + 10
    while (found := _settings_of(home)) != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    return found


def test_the_embedded_server_runs_with_the_projects_settings_and_keeps_the_users_own(tmp_path):
    import sqlalchemy as sa

    from engine.db import sqlalchemy_url
    from engine.embedded import SERVER_SETTINGS

    home = tmp_path / "home"
    env = _embedded_env(home)
    assert run(["env"], env).returncode == 0
    assert _eventually_settings_of(home, SERVER_SETTINGS) == SERVER_SETTINGS
    # A value the user stores with ALTER SYSTEM is theirs: the next start leaves it alone.
    lines = (home / "pgdata" / "postmaster.pid").read_text().splitlines()
    url = sqlalchemy_url(f"postgresql://postgres@/postgres?host={lines[4]}&port={lines[3]}")
    owner = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with owner.connect() as conn:
        conn.execute(sa.text("alter system set max_wal_size = '2GB'"))
    owner.dispose()
    assert run(["db", "stop"], env).returncode == 0
    assert run(["env"], env).returncode == 0
    theirs = {**SERVER_SETTINGS, "max_wal_size": "2GB"}
    assert _eventually_settings_of(home, theirs) == theirs
    assert run(["db", "stop"], env).returncode == 0


def test_a_killed_holder_does_not_keep_the_embedded_server_in_use(tmp_path):
    home = tmp_path / "home"
    env = _embedded_env(home)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; from engine.config import Settings; "
            "from engine.embedded import start_embedded_postgres; "
            "start_embedded_postgres(Settings.from_env()); print('holding', flush=True); "
            "time.sleep(600)",
        ],
        env=env,
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        assert _server_answers(home)
        busy = run(["db", "stop"], env)
        assert f"still in use by pid {holder.pid}" in busy.stdout
        assert _server_answers(home)
    finally:
        holder.kill()  # SIGKILL: it never leaves the list of holders itself
        holder.wait()
    stopped = run(["db", "stop"], env)
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped the embedded PostgreSQL" in stopped.stdout
    assert not _server_answers(home)


def test_db_upgrade_warns_of_a_schema_a_role_planted_before_the_least_privilege_migration(
    env, database
):
    import sqlalchemy as sa

    with database.owner.begin() as conn:  # as the analytics role could before revision 0004
        conn.execute(sa.text("create schema penguin_app authorization penguin_analytics"))
    result = run(["db", "upgrade"], env)
    assert result.returncode == 0, result.stderr
    assert "warning: schema 'penguin_app' (owner penguin_analytics) was not made by a" in (
        " ".join(result.stderr.split())
    )
    assert 'drop schema "penguin_app" cascade' in " ".join(result.stderr.split())


def test_generate_writes_a_dataset_and_refuses_a_seed_used_before(env):
    from tests.factories import run_penguin

    args = ["generate", "--tenants", "1", "--contacts", "50", "--sends", "100", "--events", "600"]
    done = run_penguin([*args, "--seed", "11"], env)
    assert done.returncode == 0, done.stderr
    assert "generated gen-11-1: 50 contacts, 100 messages," in done.stdout
    again = run_penguin([*args, "--seed", "11"], env)
    assert again.returncode == 2 and "tenants gen-11-* exist already" in again.stderr
    bad = run_penguin(["generate", "--days", "0"], env)
    assert bad.returncode == 2 and "--days must be at least 1" in bad.stderr


def test_hints_after_a_tenants_upload_carry_its_tenant(env, tmp_path):
    from tests.factories import write_csv

    assert run(["tenant", "create", "scratch"], env).returncode == 0
    path = write_csv(tmp_path / "leads.csv", [["ok@example.com"], ["=bad"]], header=["email"])
    result = run(["upload", str(path), "--list", "leads", "--tenant", "scratch"], env)
    assert result.returncode == 0, result.stderr
    [hint] = [line for line in result.stdout.splitlines() if line.startswith("see the rejects")]
    batch = result.stdout.split()[1].rstrip(":")
    command = f"penguin uploads rejects {batch} -o rejects.csv --tenant scratch"
    assert hint == f"see the rejects with: {command}"
    done = run([*shlex.split(command)[1:]], env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "=bad" in (tmp_path / "rejects.csv").read_text()

    unknown = run(["uploads", "rejects", "abcd", "--tenant", "scratch"], env)
    assert unknown.returncode == 2
    assert "see `penguin uploads list --tenant scratch`" in unknown.stderr


def test_a_send_with_the_sink_not_running_names_its_host_port_and_what_to_check(
    database, env, now, tmp_path
):
    import sqlalchemy as sa

    from engine.db import tenant_transaction
    from tests.conftest import free_port
    from tests.factories import seed_tenant

    tenant = seed_tenant(database, "acme", now, tmp_path)
    port = free_port()  # nothing listens there: PENGUIN_SMTP_SINK_PORT not what `up` used
    result = run(
        ["send", "--tenant", "acme", "--now", now.isoformat()],
        {**env, "PENGUIN_SMTP_SINK_PORT": str(port)},
    )
    assert result.returncode == 0, result.stderr
    [line] = [line for line in result.stderr.splitlines() if "deferred" in line]
    assert line.startswith(f"3 deferred 15 minutes: 127.0.0.1:{port} is down: ")
    assert line.endswith(
        "that is the local SMTP sink: check that `penguin up` is running and that "
        f"PENGUIN_SMTP_SINK_PORT ({port} here) is the port it listens on"
    )
    with tenant_transaction(database.app, tenant.tenant_id) as conn:
        recorded = conn.execute(sa.text("select last_error from app.sent_emails")).scalars()
        assert set(recorded) == {line.split(": ", 1)[1]}


def test_help_wraps_every_command_description_at_word_boundaries_only():
    """Each command's description in its group's help is its docstring's first paragraph, line
    breaks of the source removed: on a terminal wide enough it stands on one line."""
    import click
    from typer.main import get_command
    from typer.testing import CliRunner

    from engine.cli import app

    root = get_command(app)
    groups: list[tuple[list[str], click.Group]] = [([], root)]
    for name, command in root.commands.items():
        if isinstance(command, click.Group):
            groups.append(([name], command))
    for path, group in groups:
        shown = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "400"}).output
        lines = [" ".join(line.strip("│ ").split()) for line in shown.splitlines()]
        for name, command in group.commands.items():
            first = " ".join((command.help or "").split("\n\n")[0].split())
            assert any(line == f"{name} {first}" for line in lines), (path, name, shown)
