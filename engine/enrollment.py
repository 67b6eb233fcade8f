"""Enrollment: every member of an active campaign's list gets one `campaign_contacts` row.

The statement lives with the other set-based steps of a pass (`engine.sequence.steps.enroll`);
this name stays for the callers that enroll on their own (the Dagster asset, tests).
"""

from __future__ import annotations

from engine.sequence.steps import enroll_by_campaign as enroll_active_campaigns

__all__ = ["enroll_active_campaigns"]
