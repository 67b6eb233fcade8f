"""Dashboards: every page's queries on the generated 1,000,000 messages and 10,000,000 events,
with Streamlit's cache empty (cold) at every run. Target: p95 per page <= 200 ms here.

Setup, before any clock starts: an embedded PostgreSQL (pgserver) in a temporary PENGUIN_HOME,
migrated; `penguin generate`'s dataset (`--sends`, `--events`, over `--days` days up to now,
2 tenants), vacuumed and analyzed; every campaign's send forecast stored as an analytics run
stores it (`engine.forecasts`, timed and printed: it runs in the background, not while a page
waits), and once more as the next run within PENGUIN_FORECAST_INTERVAL does (each kept,
timed); the marts built by `dbt build`.

A run of a page: `st.cache_data` cleared, then the page script run once by Streamlit's AppTest
with the sidebar's defaults (the tenant that sent last, the last 30 days, every campaign and
sender) -- and the Campaigns page once more with a campaign open (`?campaign_page=`, with its
stored forecast from the marts and its live status read as `penguin_operator`). A run's
figure is the time its SQL statements took, from execute to the last row received (an
SQLAlchemy cursor event around each), summed; each page runs `--runs` times and its p95 is
reported. The script's whole run (Streamlit, charts, tables) is printed beside it.

Baseline, in the same run: the same pages with the marts' indexes out of the planner's reach
(`enable_indexscan`, `enable_bitmapscan` and `enable_indexonlyscan` off for the dashboards
role), so the ratio says what the indexes the models' post-hooks add are worth. The line names
the slowest page and its p95.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402
from bench_dbt import dbt_build, embedded_database, vacuum_analyze  # noqa: E402
from bench_send import log  # noqa: E402

from engine.config import DASHBOARDS_ROLE, PROJECT_ROOT, Settings  # noqa: E402
from engine.db import Database  # noqa: E402
from engine.forecasts import refresh_all_tenants  # noqa: E402
from engine.generate import Shape, generate  # noqa: E402
from engine.runtime import child_environment  # noqa: E402

PAGES = (
    "overview",
    "campaigns",
    "sequence",
    "deliverability",
    "senders",
    "sends",
    "contacts",
    "uploads",
)
TARGET_MS = 200
#: An analytics run's default PENGUIN_FORECAST_INTERVAL.
FORECAST_EVERY = timedelta(seconds=Settings.forecast_interval)
NO_INDEXES = ("enable_indexscan", "enable_bitmapscan", "enable_indexonlyscan")


class StatementClock:
    """Sums the time of every SQL statement run while it listens (any engine of the process)."""

    def __init__(self) -> None:
        self.total = 0.0
        self.statements = 0
        self._started: list[float] = []

    def before(self, *_args) -> None:
        self._started.append(time.perf_counter())

    def after(self, *_args) -> None:
        self.total += time.perf_counter() - self._started.pop()
        self.statements += 1

    def __enter__(self) -> StatementClock:
        sa.event.listen(sa.engine.Engine, "before_cursor_execute", self.before)
        sa.event.listen(sa.engine.Engine, "after_cursor_execute", self.after)
        return self

    def __exit__(self, *_exc) -> None:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", self.before)
        sa.event.remove(sa.engine.Engine, "after_cursor_execute", self.after)


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def measure(views: list[tuple[str, str, dict[str, str]]], runs: int) -> dict[str, dict]:
    """Each view (label, page, query parameters) run `runs` times with a cold cache."""
    import streamlit as st
    from streamlit.logger import set_log_level
    from streamlit.testing.v1 import AppTest

    st.cache_resource.clear()  # a new engine: new connections pick up the role's settings
    figures = {}
    for label, page, query in views:
        sql, whole, statements = [], [], 0
        for _ in range(runs):
            st.cache_data.clear()
            at = AppTest.from_file(str(PROJECT_ROOT / "dashboards" / "pages" / f"{page}.py"))
            # not "no runtime found" twice a run (AppTest runs a page without a server); set
            # again each time, as loading Streamlit's configuration resets it
            set_log_level("error")
            for key, value in query.items():
                at.query_params[key] = value
            start = time.perf_counter()
            with StatementClock() as clock:
                at.run(timeout=120)
            whole.append(time.perf_counter() - start)
            if at.exception:
                raise SystemExit(f"{label}: the page failed: {at.exception[0].message}")
            if "campaign_page" in query and (
                "Send forecast" not in [h.value for h in at.subheader] or len(at.dataframe) < 3
            ):
                raise SystemExit(f"{label}: the campaign or its forecast did not open")
            sql.append(clock.total)
            statements = clock.statements
        figures[label] = {
            "p95_ms": 1000 * p95(sql),
            "page_p95_ms": 1000 * p95(whole),
            "statements": statements,
        }
        log(
            f"{label:<24} queries p95 {figures[label]['p95_ms']:7.1f} ms "
            f"({statements} statements)   whole page p95 {figures[label]['page_p95_ms']:7.0f} ms"
        )
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sends", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    os.environ["DO_NOT_TRACK"] = "1"
    with (
        tempfile.TemporaryDirectory(prefix="bench-dashboards-") as tmp,
        embedded_database(Path(tmp)) as db,
    ):
        contacts = max(2, args.sends // 5)
        log(f"generating {args.sends:,} messages and about {args.events:,} events")
        shape = Shape(2, contacts, args.sends, args.events, args.days, seed=1)
        done = generate(db, shape, datetime.now(UTC))
        vacuum_analyze(db)
        start = time.perf_counter()
        reports = refresh_all_tenants(db.app, datetime.now(UTC))
        forecast_s = time.perf_counter() - start
        forecasts = sum(r.campaigns for r in reports.values())
        log(f"{forecasts} campaigns' forecasts stored in {forecast_s:.1f} s")
        # the next refresh within PENGUIN_FORECAST_INTERVAL, nothing edited: all kept
        start = time.perf_counter()
        again = refresh_all_tenants(db.app, datetime.now(UTC), FORECAST_EVERY)
        kept_s = time.perf_counter() - start
        kept = sum(r.kept for r in again.values())
        log(f"the next refresh kept {kept} of them in {kept_s:.2f} s")
        log(f"marts built in {dbt_build(db, Path(tmp) / 'target'):.0f} s")
        # the pages read as they do under `penguin up`: the dashboards role's environment
        os.environ.update(child_environment("dashboards", db))
        with db.owner.connect() as conn:
            tenant, campaign = conn.execute(
                sa.text(
                    "select tenant_name, campaign_name from analytics_marts.campaign_daily "
                    "group by 1, 2 order by sum(sent) desc limit 1"
                )
            ).one()
        views = [(page, page, {}) for page in PAGES]
        # its tenant too: the sidebar opens on the tenant that sent last, maybe another one
        one = {"tenant": tenant, "campaign_page": campaign}
        views.insert(2, ("campaigns (one open)", "campaigns", one))

        log(f"{len(views)} views, {args.runs} cold runs each")
        figures = measure(views, args.runs)
        log("baseline: the same views with the marts' indexes out of the planner's reach")
        role_settings(db, "set", "off")
        try:
            baseline = measure(views, args.runs)
        finally:
            role_settings(db, "reset")
    slowest = max(figures, key=lambda label: figures[label]["p95_ms"])
    worst, base = figures[slowest]["p95_ms"], baseline[slowest]["p95_ms"]
    print(
        f"BENCH dashboards p95_ms={worst:.1f} baseline_p95_ms={base:.1f} ratio={worst / base:.3f} "
        f"slowest_page={slowest.replace(' ', '_')} target_p95_ms={TARGET_MS} "
        f"page_p95_ms={figures[slowest]['page_p95_ms']:.0f} runs={args.runs} "
        f"forecasts={forecasts} forecasts_stored_s={forecast_s:.1f} "
        f"forecasts_kept={kept} forecasts_kept_s={kept_s:.2f} "
        f"messages={done.messages} events={done.events}",
        flush=True,
    )
    return 0


def role_settings(db: Database, verb: str, value: str | None = None) -> None:
    """The planner settings of the dashboards role in this database: `set` them to `value`,
    or `reset` them."""
    with db.owner.connect() as conn:
        database = conn.execute(sa.text("select current_database()")).scalar_one()
        for name in NO_INDEXES:
            tail = f"set {name} = {value}" if verb == "set" else f"reset {name}"
            conn.execute(sa.text(f'alter role {DASHBOARDS_ROLE} in database "{database}" {tail}'))
        conn.commit()


if __name__ == "__main__":
    sys.exit(main())
