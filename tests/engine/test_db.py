"""Connections: what a process can reach with the settings it was given."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from engine.config import ConfigError, Settings
from engine.db import Database, OwnerUnavailableError


def test_a_process_given_only_the_servers_coordinates_reaches_its_roles_never_the_owner(database):
    server = database.server
    settings = Settings(
        home=database.settings.home,
        database_url=None,
        pg_host=server.host,
        pg_port=server.port,
        pg_database=server.dbname,
    )
    child = Database(settings)
    try:
        assert child.owner_url is None
        with child.app.connect() as conn:
            assert conn.execute(sa.text("select current_user")).scalar() == "penguin_app"
        with child.dashboards.connect() as conn:
            assert conn.execute(sa.text("select current_user")).scalar() == "penguin_dashboards"
        with pytest.raises(OwnerUnavailableError, match="no owner credentials"):
            child.owner  # noqa: B018
    finally:
        child.dispose()


def test_settings_read_the_servers_coordinates_from_the_environment(tmp_path):
    settings = Settings.from_env(
        {
            "PENGUIN_HOME": str(tmp_path),
            "PENGUIN_PG_HOST": "/run/pg",
            "PENGUIN_PG_PORT": "5433",
            "PENGUIN_PG_DATABASE": "penguin",
            "PENGUIN_DASHBOARDS_PASSWORD": "s3cret",
        }
    )
    where = (settings.pg_host, settings.pg_port, settings.pg_database)
    assert where == ("/run/pg", 5433, "penguin")
    assert settings.database_url is None and settings.dashboards_password == "s3cret"
    url = Database(settings).dashboards_url
    assert (url.username, url.password, url.database) == ("penguin_dashboards", "s3cret", "penguin")
    assert url.query["host"] == "/run/pg"


def test_an_external_servers_sslmode_reaches_the_processes_given_only_coordinates(tmp_path):
    from engine.runtime import child_environment

    owner = Settings(
        home=tmp_path, database_url="postgresql://owner:pw@db.example:5432/pm?sslmode=verify-full"
    )
    db = Database(owner)
    assert db.app_url.query["sslmode"] == "verify-full"
    for kind in ("dagster", "dashboards"):
        env = child_environment(kind, db, parent={})
        assert env["PENGUIN_PG_SSLMODE"] == "verify-full"
        child = Database(Settings.from_env(env))
        assert child.owner_url is None
        assert child.app_url.query["sslmode"] == "verify-full"


def test_smtp_passwords_of_tenants_named_like_the_sink_reach_dagster_and_only_dagster(tmp_path):
    """Tenants `sink` and `sink-eu` own PENGUIN_SMTP_SINK__* and PENGUIN_SMTP_SINK_EU__*; the
    sink's own settings (PENGUIN_SMTP_SINK_PORT) share the prefix but never hold `__`."""
    from engine.runtime import child_environment

    db = Database(Settings(home=tmp_path, database_url="postgresql://o:pw@db.example:5432/pm"))
    passwords = {
        "PENGUIN_SMTP_SINK__MAIN": "s1",
        "PENGUIN_SMTP_SINK_EU__MAIN": "s2",
        "PENGUIN_SMTP_ACME__MAIN": "s3",
    }
    parent = {**passwords, "PENGUIN_SMTP_SINK_PORT": "9999"}
    dagster = child_environment("dagster", db, parent=parent)
    assert {name: dagster.get(name) for name in passwords} == passwords
    assert dagster["PENGUIN_SMTP_SINK_PORT"] == str(db.settings.smtp_sink_port)
    dashboards = child_environment("dashboards", db, parent=parent)
    assert [name for name in dashboards if name.startswith("PENGUIN_SMTP_")] == []


def test_the_tracking_server_gets_the_signing_key_and_the_app_role_and_nothing_else(tmp_path):
    from engine.runtime import child_environment

    settings = Settings(
        home=tmp_path,
        database_url="postgresql://o:pw@db.example:5432/pm",
        app_password="app-pw",
        analytics_password="analytics-pw",
        dashboards_password="dashboards-pw",
        public_url="https://t.example.com",
    )
    db = Database(settings)
    parent = {"PENGUIN_SMTP_ACME__MAIN": "smtp-pw", "PGPASSWORD": "libpq-pw", "PATH": "/bin"}
    tracking = child_environment("tracking", db, parent=parent)
    dagster = child_environment("dagster", db, parent=parent)
    dashboards = child_environment("dashboards", db, parent=parent)
    key = (tmp_path / "secret_key").read_text().strip()  # made once, for both
    assert tracking["PENGUIN_SECRET_KEY"] == dagster["PENGUIN_SECRET_KEY"] == key
    assert (
        tracking["PENGUIN_PUBLIC_URL"] == dagster["PENGUIN_PUBLIC_URL"] == "https://t.example.com"
    )
    assert tracking["PENGUIN_APP_PASSWORD"] == "app-pw"
    assert not {"smtp-pw", "libpq-pw", "analytics-pw", "dashboards-pw", "pw"} & set(
        tracking.values()
    ) - {"app-pw"}
    assert "PENGUIN_SECRET_KEY" not in dashboards
    child = Settings.from_env(tracking)
    assert (child.tracking_url, child.secret_key) == ("https://t.example.com", key)


def test_previous_signing_keys_reach_the_tracking_server_only(tmp_path):
    """They verify old links; the send runs sign new ones with the current key alone."""
    from engine.runtime import child_environment

    previous = ("o" * 43, "p" * 43)
    settings = Settings(
        home=tmp_path,
        database_url="postgresql://o:pw@db.example:5432/pm",
        secret_key="k" * 43,
        previous_secret_keys=previous,
    )
    db = Database(settings)
    tracking = child_environment("tracking", db, parent={})
    assert Settings.from_env(tracking).previous_secret_keys == previous
    assert Settings.from_env(tracking).secret_key == "k" * 43
    for kind in ("dagster", "dashboards", "audience"):
        env = child_environment(kind, db, parent={})
        assert "PENGUIN_SECRET_KEY_PREVIOUS" not in env
        assert not {"o" * 43, "p" * 43} & set(env.values())


@pytest.mark.parametrize(
    "value",
    [
        "ftp://t.example.com",
        "t.example.com",
        "https://t.example.com/?x=1",
        "https://",
        "https://t.example/x\r\nBcc: a@b.example",
        "https://t.example/a>b, <https://evil.example",
        "https://user:pw@t.example",
        "https://t.example/a b",
    ],
)
def test_a_public_url_that_links_cannot_start_with_is_refused_by_name(value):
    with pytest.raises(ConfigError, match="PENGUIN_PUBLIC_URL="):
        Settings.from_env({"PENGUIN_PUBLIC_URL": value})


def test_the_forecast_interval_may_be_zero_reaches_dagster_and_refuses_what_is_not_seconds(
    tmp_path,
):
    """PENGUIN_FORECAST_INTERVAL: 0 forecasts every campaign at each analytics run; the runs
    (Dagster's processes) get the value `penguin up` checked, and nothing else does."""
    from engine.runtime import child_environment

    assert Settings.from_env({}).forecast_interval == 300
    assert Settings.from_env({"PENGUIN_FORECAST_INTERVAL": "0"}).forecast_interval == 0
    for bad, why in (
        ("-1", "PENGUIN_FORECAST_INTERVAL=-1 is not a number of seconds (0-86400)"),
        ("5m", "PENGUIN_FORECAST_INTERVAL='5m' is not a whole number"),
        ("86401", "PENGUIN_FORECAST_INTERVAL=86401 is not a number of seconds (0-86400)"),
    ):
        with pytest.raises(ConfigError) as refused:
            Settings.from_env({"PENGUIN_FORECAST_INTERVAL": bad})
        assert str(refused.value) == why
    settings = Settings(
        home=tmp_path, database_url="postgresql://o:pw@db.example:5432/pm", forecast_interval=0
    )
    db = Database(settings)
    dagster = child_environment("dagster", db, parent={})
    assert Settings.from_env(dagster).forecast_interval == 0
    for kind in ("tracking", "dashboards"):
        assert "PENGUIN_FORECAST_INTERVAL" not in child_environment(kind, db, parent={})
