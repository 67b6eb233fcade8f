"""The embedded PostgreSQL server (pgserver) under `PENGUIN_HOME`, for machines without one."""

from __future__ import annotations

import warnings

from engine.config import Settings

_embedded: dict[str, object] = {}


def start_embedded_postgres(settings: Settings, *, keep_running: bool = False) -> str:
    """Start (or attach to) the pgserver instance under `PENGUIN_HOME`; return its URL.

    pgserver shares one server among every process that asks for the same folder and stops
    it when the last of them exits, unless `keep_running` (used by `penguin env`, whose
    exports must outlive the command).
    """
    key = str(settings.pgdata)
    if key not in _embedded:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pgserver warns when XDG_RUNTIME_DIR is unset
            import pgserver

            settings.home.mkdir(parents=True, exist_ok=True)
            _embedded[key] = pgserver.get_server(
                settings.pgdata, cleanup_mode=None if keep_running else "stop"
            )
    server = _embedded[key]
    return server.get_uri()  # type: ignore[attr-defined]


def stop_embedded_postgres(settings: Settings) -> None:
    server = _embedded.pop(str(settings.pgdata), None)
    if server is not None:
        server.cleanup()  # type: ignore[attr-defined]
