"""The running app in a real browser: headless Chromium (Debian's `chromium`, which `.ci/run`
installs) driven by Playwright, against `streamlit run dashboards/app.py` started as `penguin up`
starts it (its own environment: the dashboards role only) on a generated database.

Every page loads with no exception and no error element; one filter travels through the URL;
each page leaves a screenshot in tests/artifacts/ (ignored by git) for a person to look at.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from engine.config import PROJECT_ROOT
from engine.runtime import Child, child_environment, dashboards_command, http_ok
from tests.conftest import free_port

ARTIFACTS = PROJECT_ROOT / "tests" / "artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
#: (URL path, the page's title): every page of dashboards/app.py.
PAGES = [
    ("", "Overview"),
    ("campaigns", "Campaigns"),
    ("sequence", "Sequence"),
    ("deliverability", "Deliverability"),
    ("senders", "Senders"),
    ("sends", "Sends"),
    ("contacts", "Contacts"),
    ("uploads", "Upload contacts"),
]
#: What Streamlit renders for an uncaught exception and for `st.error`.
ERRORS = '[data-testid="stException"], [data-testid="stAlertContentError"]'
#: True once the page has shown nothing still running or loading for `quiet` ms.
SETTLED = """(quiet) => {
    const busy = document.querySelector(
        '[data-testid="stStatusWidget"], [data-testid="stSkeleton"], '
        + '[data-testid="stSkeletonElement"], [data-testid="stAppSkeleton"]');
    const now = performance.now();
    if (busy || window.__busyAt === undefined) window.__busyAt = now;
    return now - window.__busyAt >= quiet;
}"""


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("no chromium on PATH: `apt-get install -y chromium` (.ci/run does)")
    return path


@pytest.fixture(scope="module")
def app_url(generated, tmp_path_factory) -> Iterator[str]:
    """The app served by Streamlit as `penguin up` runs it: its command, its environment (the
    dashboards role only), its own process group, stopped whole."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    app = Child(
        "Dashboards",
        dashboards_command(port),
        tmp_path_factory.mktemp("streamlit") / "dashboards.log",
        lambda: http_ok(f"{url}/_stcore/health"),
        env=child_environment("dashboards", generated),
    )
    app.start(PROJECT_ROOT)
    try:
        deadline = time.monotonic() + 60
        while not app.ready():
            if app.exited() is not None or time.monotonic() > deadline:
                pytest.fail(f"streamlit did not start:\n{app.log_tail()}")
            time.sleep(0.2)
        yield url
    finally:
        app.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=_chromium(), headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


def _open(browser, url: str, title: str, screenshot: Path):
    """Load `url`, wait until the page has rendered and finished running, and save a picture."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    page.get_by_role("heading", name=title, exact=True).first.wait_for(timeout=60_000)
    # The script runs on after the title, and charts and tables load after the script: done
    # when neither the "running" indicator nor a placeholder has been seen for a second.
    page.wait_for_function(SETTLED, arg=1000, timeout=60_000, polling=100)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(screenshot), full_page=True)
    return page


@pytest.mark.xdist_group("browser")
@pytest.mark.parametrize(("path", "title"), PAGES, ids=[t for _, t in PAGES])
def test_every_page_renders_without_an_error(browser, app_url, path, title):
    page = _open(browser, f"{app_url}/{path}", title, ARTIFACTS / f"{title.lower()}.png")
    try:
        errors = page.locator(ERRORS)
        assert errors.count() == 0, errors.all_inner_texts()
        # something beyond the title: the page's own content (figures or its empty state)
        assert page.locator('[data-testid="stMainBlockContainer"]').inner_text().strip() != title
    finally:
        page.close()


@pytest.mark.xdist_group("browser")
def test_a_filter_in_the_url_chooses_what_is_shown(browser, app_url, generated):
    with generated.owner.connect() as conn:
        tenants = conn.execute(
            sa.text("select name from app.tenants where name like 'gen-%' order by name")
        ).scalars()
        first, second = list(tenants)[:2]
    shown = {}
    # the period by its name, then by its short form
    for tenant, period in ((first, "Last+7+days"), (second, "7d")):
        page = _open(
            browser,
            f"{app_url}/?tenant={tenant}&period={period}",
            "Overview",
            ARTIFACTS / f"overview-{tenant}.png",
        )
        try:
            sidebar = page.locator('[data-testid="stSidebar"]')
            assert sidebar.get_by_role("combobox", name="Tenant").input_value() == tenant
            assert sidebar.get_by_role("combobox", name="Period").input_value() == "Last 7 days"
            assert page.locator(ERRORS).count() == 0
            # the address bar keeps the period, by its name: a bookmark opens the same view
            assert re.search(r"period=Last(\+|%20)7(\+|%20)days", page.url), page.url
            shown[tenant] = page.locator('[data-testid="stMetric"]').first.inner_text()
        finally:
            page.close()
    # the two tenants' generated figures differ: the URL chose what the page read
    assert shown[first] != shown[second]


@pytest.mark.xdist_group("browser")
def test_a_campaign_is_paused_and_resumed_from_its_page(browser, app_url, generated):
    with generated.owner.connect() as conn:
        tenant, name = conn.execute(
            sa.text(
                "select t.name, c.name from app.campaigns c join app.tenants t on t.id = "
                "c.tenant_id where t.name like 'gen-%' and c.status = 'active' order by 1, 2"
            )
        ).first()
    page = _open(
        browser,
        f"{app_url}/campaigns?tenant={tenant}&campaign_page={name}",
        "Campaigns",
        ARTIFACTS / "campaign.png",
    )
    try:
        main = page.locator('[data-testid="stMainBlockContainer"]')
        for heading in ("Send forecast", "Operators' corner"):
            main.get_by_role("heading", name=heading).wait_for()
        assert page.locator(ERRORS).count() == 0, page.locator(ERRORS).all_inner_texts()
        for action, status in (("Pause", "paused"), ("Resume", "active")):
            main.get_by_role("button", name=f"{action} campaign").click()
            main.get_by_role("button", name=f"Yes, {action.lower()} it").click()
            main.get_by_text(f"{name} is now {status}.").wait_for(timeout=30_000)
            assert page.locator(ERRORS).count() == 0
    finally:
        page.close()
    with generated.owner.connect() as conn:
        status = conn.execute(
            sa.text("select status from app.campaigns where name = :n"), {"n": name}
        ).scalar_one()
    assert status == "active"
