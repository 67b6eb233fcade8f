"""dbt: the marts built on a generated 1,000,000 messages and 10,000,000 events, then built again
incrementally after one new day of data, in the same run. Targets: incremental <= 10% of the
full build (ratio = incremental / full); full build <= 120 s.

Setup, before any clock starts: an embedded PostgreSQL (pgserver) in a temporary PENGUIN_HOME,
migrated; `penguin generate`'s dataset (`--sends`, `--events`, over `--days` days ending a day
ago, 2 tenants), vacuumed and analyzed (as autovacuum would have).

Full: `dbt build` as `penguin up`'s analytics job runs it (every model and data test; the unit
tests, which test the models' logic on fixed rows, are the suite's), from the command to its
exit, with no marts yet. Then the day since: another generated tenant with a 30th of the
messages and events, over the last day (its messages queued, sent and answered after the full
build's data, as a day of a running engine's are). Incremental: the same `dbt build` again,
timed the same way. The line also prints the generation's time (not part of the ratio).

Then the freshness lag (`--freshness-seconds`, 0 to skip): `penguin up --demo` in another
temporary home, its demo audience acting at `--pace`; for `--freshness-seconds` the benchmark
polls, once a second, the newest `sent_emails.updated_at` and `email_events.recorded_at` in the
app tables and in the marts (`fct_sends`, `fct_email_events`, as the dashboards' role reads
them). A change's lag is from its own timestamp (the database's clock, when it was written) to
the poll that first finds the marts holding it; the line prints the median and the largest.
`--freshness-only` measures that alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402
from bench_latency import start_penguin_up, stop  # noqa: E402
from bench_send import log  # noqa: E402

from engine import migrate  # noqa: E402
from engine.config import DBT_PROJECT_DIR, Settings  # noqa: E402
from engine.db import Database  # noqa: E402
from engine.dbt_manifest import BUILD, dbt_executable  # noqa: E402
from engine.embedded import start_embedded_postgres, stop_embedded_postgres  # noqa: E402
from engine.generate import Shape, generate  # noqa: E402
from engine.runtime import exported_environment  # noqa: E402


@contextmanager
def embedded_database(work: Path) -> Iterator[Database]:
    """A migrated embedded PostgreSQL with its PENGUIN_HOME in `work`, stopped afterwards."""
    settings = Settings(home=work / "home", database_url=None)
    db = Database(settings, start_embedded_postgres(settings))
    try:
        migrate.upgrade(db)
        yield db
    finally:
        db.dispose()
        stop_embedded_postgres(settings)


def vacuum_analyze(db: Database) -> None:
    """What autovacuum would have done after a bulk load: statistics, BRIN ranges summarized."""
    with db.owner.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(sa.text("vacuum analyze"))


def dbt_build(db: Database, target: Path) -> float:
    env = {**os.environ, **exported_environment(db)}
    start = time.perf_counter()
    result = subprocess.run(
        [
            str(dbt_executable()),
            *BUILD,
            "--project-dir",
            str(DBT_PROJECT_DIR),
            "--profiles-dir",
            str(DBT_PROJECT_DIR),
            "--target-path",
            str(target),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        print(result.stdout[-4000:], file=sys.stderr)
        raise SystemExit("# FAILED: dbt build")
    results = json.loads((target / "run_results.json").read_text())["results"]
    slowest = sorted(results, key=lambda r: -r["execution_time"])[:5]
    log(
        "slowest: "
        + ", ".join(f"{r['unique_id'].split('.')[-1]} {r['execution_time']:.1f} s" for r in slowest)
    )
    return seconds


_APP_NEWEST = sa.text(
    """
    select (select max(updated_at) from app.sent_emails where updated_at > :sends) as sends,
           (select max(recorded_at) from app.email_events where recorded_at > :events) as events
    """
)
_MART_NEWEST = sa.text(
    """
    select (select max(updated_at) from analytics_marts.fct_sends) as sends,
           (select max(recorded_at) from analytics_marts.fct_email_events) as events
    """
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def freshness_lag(seconds: float, pace: float) -> list[float]:
    """The lags (s) of the changes written while `penguin up --demo` runs for `seconds`."""
    import warnings

    with tempfile.TemporaryDirectory(prefix="bench-fresh-") as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        proc, _ = start_penguin_up(home, "--demo", extra={"PENGUIN_DEMO_PACE": str(pace)})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            db = Database(Settings.from_env({"PENGUIN_HOME": str(home)}))
        seen = {"sends": _EPOCH, "events": _EPOCH}
        waiting: list[tuple[str, datetime]] = []  # (table, newest change) not in the marts yet
        lags: list[float] = []
        try:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                with db.owner.connect() as conn:
                    row = conn.execute(_APP_NEWEST, seen).one()
                for kind in seen:
                    if getattr(row, kind) is not None:
                        seen[kind] = getattr(row, kind)
                        waiting.append((kind, seen[kind]))
                try:
                    with db.dashboards.connect() as conn:
                        marts = conn.execute(_MART_NEWEST).one()
                except sa.exc.ProgrammingError:  # not built yet
                    marts = None
                now = datetime.now(UTC)
                for item in list(waiting):
                    kind, at = item
                    held = getattr(marts, kind) if marts is not None else None
                    if held is not None and held >= at:
                        lags.append((now - at).total_seconds())
                        waiting.remove(item)
                time.sleep(1)
        finally:
            stop(proc)
            db.dispose()
            from engine.embedded import stop_embedded_postgres

            stop_embedded_postgres(db.settings)
        if waiting:
            log(f"{len(waiting)} changes not in the marts when the clock stopped")
        return lags


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sends", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--freshness-seconds", type=float, default=300)
    parser.add_argument("--pace", type=float, default=0.2, help="the demo audience's pace")
    parser.add_argument("--freshness-only", action="store_true")
    args = parser.parse_args()
    os.environ["DO_NOT_TRACK"] = "1"
    fields = ""
    if not args.freshness_only:
        fields = build_twice(args)
    lag = ""
    if args.freshness_seconds > 0:
        lags = sorted(freshness_lag(args.freshness_seconds, args.pace))
        if lags:
            median = lags[len(lags) // 2]
            lag = f" freshness_lag_median_s={median:.0f} freshness_lag_max_s={lags[-1]:.0f}"
            lag += f" freshness_changes={len(lags)} freshness_target_s=300"
        log(f"freshness: {len(lags)} changes, lags {lag or '(none)'}")
    print(" ".join(["BENCH dbt", fields.strip(), lag.strip()]).replace("  ", " "), flush=True)
    return 0


def build_twice(args: argparse.Namespace) -> str:
    """The full and the incremental build; the line's fields."""
    with (
        tempfile.TemporaryDirectory(prefix="bench-dbt-") as tmp,
        embedded_database(Path(tmp)) as db,
    ):
        work = Path(tmp)
        # The dataset ends a day ago, the full build runs on it, then the day since arrives.
        now = datetime.now(UTC)
        contacts = max(2, args.sends // 5)
        shape = Shape(2, contacts, args.sends, args.events, args.days, seed=1)
        log(f"generating {args.sends:,} messages and about {args.events:,} events")
        start = time.perf_counter()
        done = generate(db, shape, now - timedelta(days=1), log)
        generate_s = time.perf_counter() - start
        log(f"generated {done.messages:,} messages, {done.events:,} events in {generate_s:.0f} s")
        vacuum_analyze(db)

        full_s = dbt_build(db, work / "target")
        log(f"full build: {full_s:.1f} s")

        day = Shape(
            1,
            max(1, contacts // args.days),
            args.sends // args.days,
            args.events // args.days,
            days=1,
            seed=2,
        )
        generate(db, day, now, log)
        incremental_s = dbt_build(db, work / "target")
        log(f"incremental build after one new day: {incremental_s:.1f} s")
    return (
        f"seconds={incremental_s:.1f} baseline_seconds={full_s:.1f} "
        f"ratio={incremental_s / full_s:.3f} target_ratio=0.1 full_target_seconds=120 "
        f"messages={done.messages} events={done.events} generate_seconds={generate_s:.0f}"
    )


if __name__ == "__main__":
    sys.exit(main())
