"""Opening one page of the app under AppTest, with query parameters as a shared URL has them."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from engine.config import PROJECT_ROOT

PAGES = PROJECT_ROOT / "dashboards" / "pages"


def open_page(name: str, **query: str) -> AppTest:
    """`dashboards/pages/<name>.py` run once, its URL holding `query`."""
    at = AppTest.from_file(str(PAGES / f"{name}.py"), default_timeout=60)
    for key, value in query.items():
        at.query_params[key] = value
    return at.run()
