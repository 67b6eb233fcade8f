"""The dashboards, pointed at a test database with their Streamlit caches empty."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import streamlit as st

from engine.db import Database


@pytest.fixture
def use_database(monkeypatch) -> Iterator[Callable[[Database], Database]]:
    """Call it with a database: the app then reads that database, and nothing cached from
    another test (tenants, engines) is left over."""

    def use(database: Database) -> Database:
        monkeypatch.setenv("DATABASE_URL", database.settings.database_url)
        monkeypatch.setenv("PENGUIN_HOME", str(database.settings.home))
        st.cache_data.clear()
        st.cache_resource.clear()
        return database

    yield use
    st.cache_resource.clear()
