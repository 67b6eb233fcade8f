"""Opening one page of the app under AppTest, with query parameters as a shared URL has them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from streamlit.testing.v1 import AppTest

from engine.config import PROJECT_ROOT
from engine.db import Database

PAGES = PROJECT_ROOT / "dashboards" / "pages"


def open_page(name: str, **query: str) -> AppTest:
    """`dashboards/pages/<name>.py` run once, its URL holding `query`."""
    at = AppTest.from_file(str(PAGES / f"{name}.py"), default_timeout=60)
    for key, value in query.items():
        at.query_params[key] = value
    return at.run()


class DownloadFiles:
    """What the download buttons of the AppTests run meanwhile offer, by button label: AppTest
    keeps the files in a media storage of each run, which this collects."""

    def __init__(self, monkeypatch) -> None:
        from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
        from streamlit.testing.v1 import app_test

        self.storages: list[MemoryMediaFileStorage] = []
        storages = self.storages

        class Recorded(MemoryMediaFileStorage):
            def __init__(self, media_endpoint: str) -> None:
                super().__init__(media_endpoint)
                storages.append(self)

        monkeypatch.setattr(app_test, "MemoryMediaFileStorage", Recorded)

    def text(self, at: AppTest, label: str) -> str:
        """The file behind `at`'s download button `label`, as text."""
        [button] = [b for b in at.get("download_button") if b.label == label]
        filename = button.proto.url.rsplit("/", 1)[1]
        return self.storages[-1].get_file(filename).content.decode()


#: The rates' function of the marts (dbt_project/macros/metric_rates.sql).
RATES_FUNCTION = "analytics_marts.metric_rates"


@contextmanager
def every_rate_is(database: Database, value: float) -> Iterator[None]:
    """The marts' rates function answering `value` for every rate meanwhile, as its owner (the
    analytics role) could redefine it; restored after. A page that shows a rate of its own
    making, not the marts' one definition, then shows something else."""
    with database.analytics.begin() as conn:
        definition, rates = conn.execute(
            sa.text(
                "select pg_get_functiondef(oid), "
                "cardinality(array_positions(proargmodes, 't')) "
                "from pg_proc where oid = cast(:name as regproc)"
            ),
            {"name": RATES_FUNCTION},
        ).one()
        head = definition.rsplit("\nAS ", 1)[0]  # pg_get_functiondef: "AS $function$..."
        constant = ", ".join([f"{value}::float8"] * rates)
        conn.execute(sa.text(f"{head}\nAS $body$ select {constant} $body$"))
    try:
        yield
    finally:
        with database.analytics.begin() as conn:
            conn.execute(sa.text(definition))
