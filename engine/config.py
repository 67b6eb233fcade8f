"""Effective settings, read from the environment once and passed around explicitly.

Every process of the system (CLI, Dagster webserver, daemon and runs, dbt, Streamlit) reads
the same variables, so `penguin up` only has to export them to its children for all of them
to share one PostgreSQL server, one SMTP sink and one `PENGUIN_HOME`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


class ConfigError(ValueError):
    """A setting a user gave cannot be used; the message names the variable."""


def _int(
    env: Mapping[str, str],
    name: str,
    default: int,
    *,
    least: int = 1,
    most: int = 65535,
    what: str = "a TCP port",
) -> int:
    """`name` as a whole number from `least` to `most` (default: a TCP port)."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None
    if not least <= value <= most:
        raise ConfigError(f"{name}={value} is not {what} ({least}-{most})")
    return value


#: What a base URL may hold: it goes into every message's headers and links as it is.
_BASE_URL = re.compile(r"https?://[A-Za-z0-9.-]+(?::\d{1,5})?(?:/[A-Za-z0-9._~/%-]*)?")


def _url(env: Mapping[str, str], name: str) -> str | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    if not _BASE_URL.fullmatch(raw):
        raise ConfigError(
            f"{name}={raw!r} is not a base URL like https://track.example.com (http or https, "
            "a host name and port, optionally a path; no user, query, spaces or quotes)"
        )
    return raw.rstrip("/")


def _previous_keys(env: Mapping[str, str]) -> tuple[str, ...]:
    """PENGUIN_SECRET_KEY_PREVIOUS: keys separated by commas, each as long as a key must be; a
    short one is named by its position, never printed."""
    from engine.tracking.tokens import MIN_SECRET_LENGTH

    keys = tuple(
        key.strip() for key in env.get("PENGUIN_SECRET_KEY_PREVIOUS", "").split(",") if key.strip()
    )
    for number, key in enumerate(keys, 1):
        if len(key) < MIN_SECRET_LENGTH:
            raise ConfigError(
                f"PENGUIN_SECRET_KEY_PREVIOUS: key {number} of {len(keys)} is {len(key)} "
                f"characters long; a key has at least {MIN_SECRET_LENGTH} (list the previous "
                "keys whole, separated by commas)"
            )
    return keys


#: A project-local state folder: used instead of the per-user one when the current directory has
#: it (a checkout whose state lived there before, or one kept beside a project on purpose).
LOCAL_HOME = ".penguin"


def default_home(cwd: Path | None = None) -> Path:
    """`PENGUIN_HOME` when unset: `./.penguin` if the current directory has one, else the
    per-user data folder (`~/.local/share/penguinmails` on Linux), so a command run from
    another directory finds the same database instead of starting an empty one there."""
    local = (cwd or Path.cwd()) / LOCAL_HOME
    if local.is_dir():
        return local
    import platformdirs

    return Path(platformdirs.user_data_dir("penguinmails", appauthor=False))


@dataclass(frozen=True)
class Settings:
    """What a process knows. The owner's `database_url` is for migrations and tenant creation
    only: processes started by `penguin up` get the server's coordinates (`pg_host`, `pg_port`,
    `pg_database`) and the password of the one role they use, never the owner's URL."""

    home: Path
    database_url: str | None
    app_password: str | None = None
    analytics_password: str | None = None
    dashboards_password: str | None = None
    operator_password: str | None = None
    pg_host: str | None = None
    pg_port: int = 5432
    pg_database: str = "postgres"
    #: libpq's sslmode for the roles' connections (an external server's `?sslmode=` carries
    #: over to the processes that get only PENGUIN_PG_*).
    pg_sslmode: str | None = None
    smtp_sink_host: str = "127.0.0.1"
    smtp_sink_port: int = 2525
    dagster_port: int = 3000
    dashboard_port: int = 8501

    dagster_code_port: int = 4266
    #: The tracking server's port, and the address its links use in messages (the port on
    #: 127.0.0.1 unless PENGUIN_PUBLIC_URL says where the world reaches it).
    tracking_port: int = 8090
    public_url: str | None = None
    #: The key tracking links are signed with; None: the one stored under `home`
    #: (`engine.tracking.tokens.secret_key`).
    secret_key: str | None = None
    #: Keys links were signed with before `secret_key` (PENGUIN_SECRET_KEY_PREVIOUS, comma-
    #: separated, most recent first): the tracking server still verifies them.
    previous_secret_keys: tuple[str, ...] = ()
    #: Seconds between two looks of the freshness sensor at new sends and events.
    analytics_interval: int = 30
    #: Seconds an analytics run keeps an unchanged campaign's forecast (0: forecast each run);
    #: five minutes, the engine's pass interval (`engine.forecasts`).
    forecast_interval: int = 300
    #: The authserv-ids of the receiving mail servers whose `Authentication-Results` header
    #: (the topmost) inbound mail is trusted by (`engine.mailboxes.trust`); none is implied.
    #: From PENGUIN_AUTHSERV_ID, comma-separated.
    authserv_ids: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Settings:
        env = os.environ if env is None else env
        home = Path(env.get("PENGUIN_HOME") or default_home(cwd)).expanduser().absolute()
        return cls(
            home=home,
            database_url=env.get("DATABASE_URL") or None,
            app_password=env.get("PENGUIN_APP_PASSWORD") or None,
            analytics_password=env.get("PENGUIN_ANALYTICS_PASSWORD") or None,
            dashboards_password=env.get("PENGUIN_DASHBOARDS_PASSWORD") or None,
            operator_password=env.get("PENGUIN_OPERATOR_PASSWORD") or None,
            pg_host=env.get("PENGUIN_PG_HOST") or None,
            pg_port=_int(env, "PENGUIN_PG_PORT", cls.pg_port),
            pg_database=env.get("PENGUIN_PG_DATABASE") or cls.pg_database,
            pg_sslmode=env.get("PENGUIN_PG_SSLMODE") or None,
            smtp_sink_port=_int(env, "PENGUIN_SMTP_SINK_PORT", cls.smtp_sink_port),
            dagster_port=_int(env, "PENGUIN_DAGSTER_PORT", cls.dagster_port),
            dashboard_port=_int(env, "PENGUIN_DASHBOARD_PORT", cls.dashboard_port),
            dagster_code_port=_int(env, "PENGUIN_DAGSTER_CODE_PORT", cls.dagster_code_port),
            tracking_port=_int(env, "PENGUIN_TRACKING_PORT", cls.tracking_port),
            public_url=_url(env, "PENGUIN_PUBLIC_URL"),
            secret_key=env.get("PENGUIN_SECRET_KEY") or None,
            previous_secret_keys=_previous_keys(env),
            analytics_interval=_int(
                env,
                "PENGUIN_ANALYTICS_INTERVAL",
                cls.analytics_interval,
                most=86_400,
                what="a number of seconds",
            ),
            forecast_interval=_int(
                env,
                "PENGUIN_FORECAST_INTERVAL",
                cls.forecast_interval,
                least=0,
                most=86_400,
                what="a number of seconds",
            ),
            authserv_ids=tuple(
                i.strip().lower()
                for i in (env.get("PENGUIN_AUTHSERV_ID") or "").split(",")
                if i.strip()
            ),
        )

    @property
    def tracking_url(self) -> str:
        """Where recipients reach the tracking server: what its links in messages start with."""
        return self.public_url or f"http://127.0.0.1:{self.tracking_port}"

    @property
    def pgdata(self) -> Path:
        return self.home / "pgdata"

    @property
    def maildir(self) -> Path:
        return self.home / "maildir"

    @property
    def maildir_cursor(self) -> Path:
        """Where the Maildir's last complete poll got to (the poll runs keep it)."""
        return self.home / "mailboxes" / "maildir-cursor.json"

    @property
    def uploads(self) -> Path:
        return self.home / "uploads"

    @property
    def event_files(self) -> Path:
        """Where providers' event exports are dropped (`inbox/<tenant>/<provider>/<file>`)."""
        return self.home / "events"

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    @property
    def logs(self) -> Path:
        return self.home / "logs"


#: Roles created by the migrations (cluster-wide, so every database of a server shares them).
APP_ROLE = "penguin_app"
ANALYTICS_ROLE = "penguin_analytics"
DASHBOARDS_ROLE = "penguin_dashboards"
OPERATOR_ROLE = "penguin_operator"
#: Every role the migrations make, besides the owner.
ROLES = (APP_ROLE, ANALYTICS_ROLE, DASHBOARDS_ROLE, OPERATOR_ROLE)

#: The repository root: dbt project, workspace.yaml and the Streamlit app live beside the code.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
DBT_PROJECT_DIR = PROJECT_ROOT / "dbt_project"
