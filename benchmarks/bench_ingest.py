"""ingest: `penguin upload` of a generated 1,000,000-row export (about 2% invalid addresses,
5% repeated ones) into a tenant that already has 1,000,000 contacts, half of them in the file.
Targets here: <= 2x the baseline; peak RSS <= 1 GB; a 10,000,000-row file streams.

Baseline, measured in the same run: a bare `COPY` of the same file, from a separate process,
into a table preloaded the same way with a unique index on the lowercased address. The file
repeats addresses by design, so the index also holds the line number (the table's identity):
what is measured is writing the rows and maintaining a unique expression index, without any
reading, checking, merging or list membership.

Each figure is wall time of a whole process (interpreter start included, as a user waits for
it) and its peak resident memory (`wait4`'s ru_maxrss). `--streaming-rows N` also loads an
N-row file (default 10,000,000; 0 skips it) and prints its peak memory beside the 1M file's:
a ratio near 1 means memory does not grow with the file.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine import migrate  # noqa: E402
from engine.config import Settings  # noqa: E402
from engine.db import Database  # noqa: E402
from engine.embedded import start_embedded_postgres  # noqa: E402
from engine.runtime import exported_environment  # noqa: E402
from tests.factories import write_contacts_csv  # noqa: E402

BIN = Path(sys.executable).parent

BASELINE_TABLE = """
drop table if exists public.copy_baseline;
create table public.copy_baseline (
    line bigint generated always as identity,
    email text, first_name text, last_name text, company text, title text, phone text,
    website text, city text, country text, linkedin_url text, lead_source text
);
create unique index copy_baseline_email_idx on public.copy_baseline (lower(email), line);
"""

#: The baseline's child: COPY one file into the table, as fast as PostgreSQL takes it.
BASELINE_COPY = """
import sys, psycopg
with psycopg.connect(sys.argv[1]) as conn, conn.cursor() as cur, open(sys.argv[2], "rb") as f:
    with cur.copy(
        "copy public.copy_baseline (email, first_name, last_name, company, title, phone, "
        "website, city, country, linkedin_url, lead_source) from stdin (format csv, header true)"
    ) as copy:
        while block := f.read(1 << 20):
            copy.write(block)
"""


@dataclass(frozen=True)
class Measured:
    seconds: float
    peak_rss_mb: float


def measure(args: list[str], env: dict[str, str]) -> Measured:
    """Run `args` to completion; its wall time and peak RSS (of it and what it waited for)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        args, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    output = proc.stdout.read() if proc.stdout else b""
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.stderr.write(output.decode(errors="replace")[-3000:])
        raise SystemExit(f"{' '.join(args[:3])} ... failed with exit code {proc.returncode}")
    return Measured(seconds, usage.ru_maxrss / 1024)


def upload(path: Path, list_name: str, env: dict[str, str], tenant: str = "default") -> Measured:
    return measure(
        [str(BIN / "penguin"), "upload", str(path), "--list", list_name, "--tenant", tenant], env
    )


def log(message: str) -> None:
    print(f"# {message}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--streaming-rows", type=int, default=10_000_000)
    args = parser.parse_args()
    rows = args.rows

    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        work = Path(tmp)
        settings = Settings(home=work / "home", database_url=None)
        owner_url = start_embedded_postgres(settings)  # kept up while this process lives
        db = Database(settings)
        migrate.upgrade(db)
        env = {
            **os.environ,
            **exported_environment(db),
            "DO_NOT_TRACK": "1",
            "PENGUIN_HOME": str(settings.home),
        }
        env.pop("DAGSTER_HOME", None)

        if rows % 40:
            raise SystemExit("--rows must be a multiple of 40")
        half = rows // 2  # the existing contacts are rows half.. of the same generator
        log(f"writing the files: {rows:,} rows already loaded, then {rows:,} rows to upload")
        existing, _ = write_contacts_csv(work / "existing.csv", rows, first=half, chunk=half)
        upload_file, made = write_contacts_csv(work / "upload.csv", rows, chunk=half)
        size_mb = upload_file.stat().st_size / 1e6
        log(
            f"{upload_file.name}: {size_mb:.0f} MB, {made.invalid:,} invalid, "
            f"{made.duplicates:,} repeated addresses"
        )

        log("loading the existing contacts (not timed against the baseline)")
        first = upload(existing, "existing", env)
        log(f"into an empty tenant: {first.seconds:.1f}s, peak RSS {first.peak_rss_mb:.0f} MB")

        log("baseline: COPY into a table with the existing rows and a unique index")
        import psycopg

        with psycopg.connect(owner_url, autocommit=True) as conn:
            conn.execute(BASELINE_TABLE)
            measure([sys.executable, "-c", BASELINE_COPY, owner_url, str(existing)], env)
            conn.execute("vacuum analyze public.copy_baseline")
            conn.execute("vacuum analyze app.contacts")
            conn.execute("vacuum analyze app.contact_list_members")
        baseline = measure([sys.executable, "-c", BASELINE_COPY, owner_url, str(upload_file)], env)
        log(f"baseline COPY: {baseline.seconds:.1f}s")

        log("penguin upload into the tenant with existing contacts")
        ours = upload(upload_file, "bench", env)
        log(f"penguin upload: {ours.seconds:.1f}s, peak RSS {ours.peak_rss_mb:.0f} MB")
        print(
            f"BENCH ingest seconds={ours.seconds:.2f} baseline_seconds={baseline.seconds:.2f} "
            f"ratio={ours.seconds / baseline.seconds:.2f} peak_rss_mb={ours.peak_rss_mb:.0f} "
            f"rows={rows} rows_per_second={rows / ours.seconds:.0f}",
            flush=True,
        )

        big_rows = args.streaming_rows
        if big_rows:
            existing.unlink()
            log(f"streaming: writing a {big_rows:,}-row file")
            big, _ = write_contacts_csv(work / "big.csv", big_rows, seed=7)
            log(f"{big.name}: {big.stat().st_size / 1e9:.1f} GB; penguin upload into a new list")
            streamed = upload(big, "streaming", env)
            print(
                f"BENCH ingest_streaming peak_rss_mb={streamed.peak_rss_mb:.0f} "
                f"baseline_peak_rss_mb={ours.peak_rss_mb:.0f} "
                f"ratio={streamed.peak_rss_mb / ours.peak_rss_mb:.2f} rows={big_rows} "
                f"seconds={streamed.seconds:.1f}",
                flush=True,
            )
        db.dispose()


if __name__ == "__main__":
    main()
