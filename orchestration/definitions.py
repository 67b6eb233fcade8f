"""The code location: each domain module brings its own assets, jobs, sensors, schedules.

Every job runs in-process: its steps are small and sequential, and a process per step cost
seconds of imports each (the run worker already has the definitions loaded).
"""

from __future__ import annotations

import dagster as dg

from orchestration import analytics, campaigns, engagement, ingestion, sending
from orchestration.resources import PostgresResource, SmtpResource

defs = dg.Definitions.merge(
    ingestion.defs,
    sending.defs,
    campaigns.defs,
    engagement.defs,
    analytics.defs,
    dg.Definitions(
        resources={"postgres": PostgresResource(), "smtp": SmtpResource()},
        executor=dg.in_process_executor,
    ),
)
