"""Campaign control from the Dagster UI: launch, pause or resume a campaign.

Operators start `campaign_control_job` from the Launchpad with run config naming the tenant, the
campaign and the action. A launch that validation refuses fails the run, and the failure's
description lists what is wrong (the same text `penguin campaign launch` prints). A launched
campaign needs nothing else: the due-sends sensor sees its enrollments at once.
"""

# No `from __future__ import annotations`: Dagster reads these annotations at runtime.
from typing import Literal

import dagster as dg

from engine.campaigns import (
    CampaignError,
    campaign_named,
    launch_campaign,
    pause_campaign,
    resume_campaign,
)
from engine.db import tenant_transaction
from engine.tenants import UnknownTenantError, tenant_id
from orchestration.clock import utcnow
from orchestration.resources import PostgresResource


class CampaignAction(dg.Config):
    """Which campaign of which tenant, and what to do with it."""

    tenant: str = "default"
    campaign: str
    action: Literal["launch", "pause", "resume"]


@dg.op(description="Launch, pause or resume one campaign; a refused action fails the run.")
def control_campaign(
    context: dg.OpExecutionContext, config: CampaignAction, postgres: PostgresResource
) -> dg.Output[str]:
    db, now = postgres.db, utcnow()
    try:
        tenant = tenant_id(db.app, config.tenant)
    except UnknownTenantError as exc:
        raise dg.Failure(description=str(exc)) from None
    try:
        with tenant_transaction(db.app, tenant) as conn:
            campaign = campaign_named(conn, config.campaign)
            if config.action == "launch":
                check = launch_campaign(conn, campaign.id, now)
                detail = check.summary()
            elif config.action == "pause":
                detail = f"now {pause_campaign(conn, campaign.id, now)}"
            else:
                detail = f"now {resume_campaign(conn, campaign.id, now)}"
    except CampaignError as exc:
        raise dg.Failure(
            description=f"{config.action} {config.tenant}/{config.campaign} refused: {exc}",
            metadata={"tenant": config.tenant, "campaign": config.campaign},
        ) from None
    message = f"{config.action} {config.tenant}/{config.campaign}: {detail}"
    context.log.info(message)
    return dg.Output(
        message,
        metadata={"tenant": config.tenant, "campaign": config.campaign, "result": detail},
    )


@dg.job(
    description=(
        "Launch, pause or resume a campaign. Run config: "
        "ops.control_campaign.config = {tenant, campaign, action: launch|pause|resume}."
    ),
    tags={"penguin/control": "campaign"},
)
def campaign_control_job():
    control_campaign()


defs = dg.Definitions(jobs=[campaign_control_job])
