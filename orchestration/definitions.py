"""The code location: each domain module brings its own assets, jobs, sensors, schedules."""

from __future__ import annotations

import dagster as dg

from orchestration import analytics, ingestion, sending
from orchestration.resources import PostgresResource, SmtpResource

defs = dg.Definitions.merge(
    ingestion.defs,
    sending.defs,
    analytics.defs,
    dg.Definitions(resources={"postgres": PostgresResource(), "smtp": SmtpResource()}),
)
