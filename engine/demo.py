"""Demo data for `penguin up --demo`: a tenant, a sender, a sample CSV and a campaign.

Loading is idempotent: running it twice leaves one tenant, one sender, one campaign, and the
same contacts. The CSV is dropped into the uploads inbox once: a later start on the same
`PENGUIN_HOME` finds it uploaded (or still waiting there) and leaves the demo data as it is, so
no second batch and no second round of sends.

The CSV's first contacts are the audience's scripted recipients (`engine.audience.SCRIPTED`):
every demo shows an open, a click, a reply, an unsubscribe, a bounce and a complaint.
"""

from __future__ import annotations

import csv
import random
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa

from engine import inbox
from engine.audience import SCRIPTED
from engine.campaigns import Step, create_campaign, launch_campaign
from engine.db import Database, tenant_transaction
from engine.senders import create_sender
from engine.tenants import create_tenant

DEMO_TENANT = "demo"
DEMO_LIST = "prospects"
DEMO_CAMPAIGN = "Welcome to PenguinMails"

FIRST = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Tim"]
LAST = [
    "Lovelace",
    "Hopper",
    "Turing",
    "Dijkstra",
    "Liskov",
    "Knuth",
    "Allen",
    "Thompson",
    "Perlman",
    "Berners-Lee",
]
COMPANIES = ["Analytical Engines", "Cobol Works", "Bletchley Labs", "Semaphore BV", "CLU Corp"]
TITLES = ["CTO", "Head of Data", "VP Engineering", "Data Engineer", "Founder"]


@dataclass(frozen=True)
class DemoInfo:
    tenant_id: uuid.UUID
    campaign_id: uuid.UUID
    #: The CSV dropped into the uploads inbox now; None when an earlier load dropped it.
    csv_path: Path | None


def write_sample_csv(path: Path, rows: int = 40, seed: int = 7) -> Path:
    """A CSV like a CRM export: mixed header names, one bad address, one duplicate; its first
    rows are the audience's scripted recipients, then random people up to `rows`."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "Email Address",
                "First Name",
                "Last Name",
                "Company",
                "Job Title",
                "Country",
                "Favourite Penguin",
            ]
        )
        emails = []
        people = [(a, *a.split("@")[0].split(".")) for a in SCRIPTED]
        for i in range(len(people), rows):
            first, last = rng.choice(FIRST), rng.choice(LAST)
            people.append((f"{first}.{last}.{i}@customers.example".lower(), first, last))
        for email, first, last in people:
            first, last = first.title(), last.title()
            emails.append(email)
            writer.writerow(
                [
                    email,
                    first,
                    last,
                    rng.choice(COMPANIES),
                    rng.choice(TITLES),
                    rng.choice(["NL", "DE", "US", "GB"]),
                    rng.choice(["Emperor", "Adelie", "Gentoo", "Rockhopper"]),
                ]
            )
        writer.writerow(["not-an-address", "Broken", "Row", "Nowhere", "", "", ""])
        # The first address again, in capitals: merged into the same contact.
        writer.writerow([emails[0].upper(), "", "", "", "Rear Admiral", "US", "Emperor"])
    return path


_CAMPAIGN_ID = sa.text("select id, status from app.campaigns where name = :name")
_UPLOADED = sa.text("select exists (select from app.upload_batches)")


def load_demo(db: Database, now: datetime) -> DemoInfo:
    """The demo tenant, sender and launched campaign, and (the first time only) the sample CSV
    in the uploads inbox, where the upload sensor loads, enrolls and sends it."""
    tenant, _ = create_tenant(db.owner, DEMO_TENANT)
    with tenant_transaction(db.app, tenant) as conn:
        sender = create_sender(
            conn,
            "pat@penguinmails.example",
            "Pat from PenguinMails",
            daily_limit=1000,
            min_gap_seconds=0,
        )
        existing = conn.execute(_CAMPAIGN_ID, {"name": DEMO_CAMPAIGN}).one_or_none()
        if existing is None:
            campaign = create_campaign(
                conn,
                DEMO_CAMPAIGN,
                now,
                list_name=DEMO_LIST,
                sender_id=sender,
                description="One friendly email to every prospect",
                steps=[
                    Step(
                        "email",
                        name="Hello",
                        subject="Hello {{ first_name }}, a note for {{ company }}",
                        body_text=(
                            "Hi {{ first_name }},\n\n"
                            "We noticed {{ company }} likes "
                            "{{ favourite_penguin | default('all') }} penguins. So do we.\n\n"
                            "A two-minute tour: https://penguinmails.example/tour\n\n"
                            "— Pat\n"
                        ),
                        body_html=(
                            "<p>Hi {{ first_name }},</p>"
                            "<p>We noticed {{ company }} likes "
                            "{{ favourite_penguin | default('all') }} penguins. So do we.</p>"
                            '<p><a href="https://penguinmails.example/tour">Take the two-minute '
                            'tour</a> or <a href="https://penguinmails.example/pricing">see '
                            "pricing</a>.</p><p>— Pat</p>"
                        ),
                    )
                ],
            )
            launch_campaign(conn, campaign, now)
        else:
            campaign = existing.id
        uploaded = conn.execute(_UPLOADED).scalar_one()
    waiting = inbox.inbox_path(db.settings.uploads) / DEMO_TENANT / DEMO_LIST
    if uploaded or any(not p.name.startswith(".") for p in _files(waiting)):
        return DemoInfo(tenant_id=tenant, campaign_id=campaign, csv_path=None)
    sample = write_sample_csv(db.settings.home / "demo" / "sample-prospects.csv")
    dropped = inbox.drop(db.settings.uploads, sample, DEMO_TENANT, DEMO_LIST)
    return DemoInfo(tenant_id=tenant, campaign_id=campaign, csv_path=dropped)


def _files(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except FileNotFoundError:
        return []
