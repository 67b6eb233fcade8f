"""The one place orchestration reads the wall clock; engine functions all take `now`."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)
