"""Small builders for test data, all through the engine's own functions."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from engine.campaigns import Step, create_campaign, launch_campaign
from engine.config import DBT_PROJECT_DIR
from engine.db import Database, tenant_transaction
from engine.enrollment import enroll_active_campaigns
from engine.ingest import ingest_file
from engine.runtime import exported_environment
from engine.senders import create_sender
from engine.tenants import create_tenant

DBT = str(Path(sys.executable).with_name("dbt"))
PENGUIN = str(Path(sys.executable).with_name("penguin"))


def run_penguin(args: list[str], env: dict[str, str], **kwargs) -> subprocess.CompletedProcess:
    """The `penguin` command as a user runs it, from the repository root unless `cwd`."""
    return subprocess.run(
        [PENGUIN, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=kwargs.pop("timeout", 300),
        cwd=kwargs.pop("cwd", DBT_PROJECT_DIR.parent),
        **kwargs,
    )


HEADER = ["Email", "First Name", "Last Name", "Company", "Plan"]


def dbt(database: Database, *args: str, check: bool = True) -> str:
    """Run the dbt CLI on the project against `database`; its output (fails the test on error,
    unless `check` is false)."""
    env = {**os.environ, **exported_environment(database)}
    result = subprocess.run(
        [
            DBT,
            *args,
            "--project-dir",
            str(DBT_PROJECT_DIR),
            "--profiles-dir",
            str(DBT_PROJECT_DIR),
            "--target-path",
            str(database.settings.home / "dbt-target"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0 or not check, result.stdout[-3000:] + result.stderr[-2000:]
    return result.stdout


def write_csv(path: Path, rows: list[list[str]], header: list[str] = HEADER) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def people(prefix: str, count: int) -> list[list[str]]:
    return [
        [f"{prefix}{i}@example.com", f"First{i}", f"Last{i}", f"{prefix.title()} Inc", "pro"]
        for i in range(count)
    ]


@dataclass(frozen=True)
class SeededTenant:
    tenant_id: uuid.UUID
    name: str
    campaign_id: uuid.UUID
    sender_id: uuid.UUID
    list_name: str


def seed_tenant(
    db: Database,
    name: str,
    now: datetime,
    folder: Path,
    *,
    rows: list[list[str]] | None = None,
    steps: list[Step] | None = None,
    enroll: bool = True,
) -> SeededTenant:
    """A tenant with a sender (delivering to the sink), a launched campaign and contacts."""
    tenant_id, _ = create_tenant(db.owner, name)
    steps = steps or [
        Step(
            "email",
            subject="Hi {{ first_name }}",
            body_text="Hello {{ first_name }} at {{ company }} ({{ plan }})",
        )
    ]
    with tenant_transaction(db.app, tenant_id) as conn:
        # No gap, a high limit: one pass sends every due message (throttle tests set their own).
        sender = create_sender(
            conn,
            f"sales@{name}.example",
            f"{name.title()} Sales",
            daily_limit=100_000,
            min_gap_seconds=0,
            now=now,
        )
        campaign = create_campaign(
            conn, f"{name} outreach", now, list_name="leads", sender_id=sender, steps=steps
        )
        launch_campaign(conn, campaign, now)
    path = write_csv(folder / f"{name}.csv", rows if rows is not None else people(name, 3))
    ingest_file(db.app, tenant_id, path, "leads", now)
    if enroll:
        with tenant_transaction(db.app, tenant_id) as conn:
            enroll_active_campaigns(conn, now)
    return SeededTenant(tenant_id, name, campaign, sender, "leads")


@dataclass(frozen=True)
class ContactsCsv:
    """What `write_contacts_csv` put in its file."""

    rows: int
    invalid: int
    duplicates: int

    @property
    def distinct(self) -> int:
        return self.rows - self.invalid - self.duplicates


_FIRST = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Zoë", "José"]
_LAST = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Müller", "O'Brien"]
_DOMAINS = ["example.com", "acme.example", "globex.example", "initech.example", "hooli.example"]


def contacts_frame(start: int, count: int, seed: int = 0):
    """Rows `start`..`start+count` of a realistic export, like Apollo's or HubSpot's.

    Every 50th row (i % 50 == 11) has a broken address and every 20th (i % 20 == 7) repeats
    the address of row i - 3 in upper case: 2% invalid, 5% duplicates, never overlapping.
    """
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(seed + start)
    i = np.arange(start, start + count)
    frame = pl.DataFrame(
        {
            "i": i,
            "First Name": np.array(_FIRST)[rng.integers(0, len(_FIRST), count)],
            "Last Name": np.array(_LAST)[rng.integers(0, len(_LAST), count)],
            "domain": np.array(_DOMAINS)[i % len(_DOMAINS)],
        }
    )
    ascii_name = (
        pl.col("First Name")
        .str.normalize("NFKD")
        .str.replace_all(r"[^A-Za-z]", "")
        .str.to_lowercase()
    )
    address = pl.format(
        "{}.{}{}@{}",
        ascii_name,
        pl.col("Last Name").str.replace_all(r"[^A-Za-z]", "").str.to_lowercase(),
        pl.col("i"),
        pl.col("domain"),
    )
    return frame.with_columns(
        pl.when(pl.col("i") % 50 == 11)
        .then(pl.format("{} at {}", ascii_name, pl.col("domain")))
        .when((pl.col("i") % 20 == 7) & (pl.col("i") >= 3))
        .then(pl.lit("DUP"))
        .otherwise(address)
        .alias("Email"),
    ).select(
        # a duplicate repeats row i - 3's address, which is in this chunk or was written before
        pl.when(pl.col("Email") == "DUP")
        .then(pl.col("Email").shift(3).str.to_uppercase())
        .otherwise(pl.col("Email"))
        .alias("Email"),
        "First Name",
        "Last Name",
        pl.format("{} {}", pl.col("Last Name"), pl.lit("Inc")).alias("Company"),
        pl.lit("Head of Engineering").alias("Title"),
        pl.format("+1 555 {}", pl.col("i")).alias("Phone"),
        pl.format("https://{}", pl.col("domain")).alias("Website"),
        pl.lit("Berlin").alias("City"),
        pl.lit("Germany").alias("Country"),
        pl.format("https://www.linkedin.com/in/person-{}", pl.col("i")).alias("LinkedIn URL"),
        pl.lit("Apollo").alias("Lead Source"),
    )


def write_contacts_csv(
    path: Path, rows: int, *, seed: int = 0, first: int = 0, chunk: int = 500_000
) -> tuple[Path, ContactsCsv]:
    """A generated export of `rows` contacts (rows `first`.. of `contacts_frame`), written in
    chunks so memory stays flat. Files of one seed share the addresses of the rows they share,
    when `first` is a multiple of `chunk`."""
    assert chunk % 20 == 0, "a chunk must hold each duplicate's original"
    assert first % chunk == 0, "files share addresses only chunk by chunk"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        for start in range(first, first + rows, chunk):
            frame = contacts_frame(start, min(chunk, first + rows - start), seed)
            frame.write_csv(handle, include_header=start == first)
    end = first + rows
    invalid = sum(1 for i in range(11, end, 50) if i >= first)
    duplicates = sum(1 for i in range(7, end, 20) if i >= max(3, first))
    return path, ContactsCsv(rows, invalid, duplicates)
