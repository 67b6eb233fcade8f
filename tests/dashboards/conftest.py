"""The dashboards, pointed at a test database with their Streamlit caches empty."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import streamlit as st

from engine.db import Database


@pytest.fixture(autouse=True)
def _main_module_restored() -> Iterator[None]:
    """AppTest runs a page as `sys.modules["__main__"]` and leaves it there; a process started
    afterwards by spawn or forkserver (the template renderer of a later test's send) would
    import that page again as its main module, and run it outside Streamlit."""
    import sys

    main = sys.modules["__main__"]
    yield
    sys.modules["__main__"] = main


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


@pytest.fixture(scope="module")
def generated(pg_server, template_database, tmp_path_factory):
    """A database filled by `penguin generate` (2 tenants, their last 30 days up to now) and
    the marts dbt built from it, shared by a module's page tests (which only read it)."""
    import uuid
    from datetime import UTC, datetime

    import sqlalchemy as sa

    from engine.db import sqlalchemy_url
    from engine.forecasts import refresh_all_tenants
    from engine.generate import Shape, generate
    from tests.conftest import copy_of_template
    from tests.factories import dbt

    name = f"dash_{uuid.uuid4().hex[:8]}"
    db = copy_of_template(pg_server, template_database, name, tmp_path_factory.mktemp("dash"))
    generate(db, Shape(2, 400, 2_000, 12_000, 30, seed=11), datetime.now(UTC))
    refresh_all_tenants(db.app, datetime.now(UTC))  # as an analytics run does before dbt
    dbt(db, "build", "--exclude-resource-type", "unit_test")
    yield db
    db.dispose()
    admin = sa.create_engine(sqlalchemy_url(pg_server), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"drop database {name} with (force)"))
    admin.dispose()


@pytest.fixture
def empty_marts(use_database, database) -> Database:
    """A fresh database (its only tenant, `default`, has nothing) with the marts built."""
    from tests.factories import dbt

    use_database(database)
    dbt(database, "build", "--exclude-resource-type", "unit_test")
    return database
