"""Small builders for test data, all through the engine's own functions."""

from __future__ import annotations

import csv
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from engine.campaigns import Step, create_campaign, launch_campaign
from engine.db import Database, tenant_transaction
from engine.enrollment import enroll_active_campaigns
from engine.ingest import ingest_csv
from engine.senders import create_sender
from engine.tenants import create_tenant

HEADER = ["Email", "First Name", "Last Name", "Company", "Plan"]


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
        sender = create_sender(conn, f"sales@{name}.example", f"{name.title()} Sales")
        campaign = create_campaign(
            conn, f"{name} outreach", now, list_name="leads", sender_id=sender, steps=steps
        )
        launch_campaign(conn, campaign, now)
    path = write_csv(folder / f"{name}.csv", rows if rows is not None else people(name, 3))
    ingest_csv(db.app, tenant_id, path, "leads", now)
    if enroll:
        with tenant_transaction(db.app, tenant_id) as conn:
            enroll_active_campaigns(conn, now)
    return SeededTenant(tenant_id, name, campaign, sender, "leads")
