"""The data-access module's own logic, apart from the marts it reads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dashboards.data import as_of_caption

NOW = datetime(2026, 12, 8, 9, 30, tzinfo=UTC)


def test_data_as_of_is_never_later_than_now():
    # `penguin send --now <tomorrow>` stamped rows a day ahead; the marts built a minute ago
    tomorrow, built = NOW + timedelta(days=1), NOW - timedelta(minutes=1)
    caption = as_of_caption(tomorrow, built, NOW)
    assert caption.startswith("Data as of 2026-12-08 09:29 UTC: the newest send or event")
    assert "2026-12-09" not in caption
    # a build stamped ahead too (a fast clock on dbt's host): now, at the latest
    assert as_of_caption(tomorrow, tomorrow, NOW).startswith("Data as of 2026-12-08 09:30 UTC")


def test_data_as_of_is_the_newest_change_when_it_is_in_the_past():
    caption = as_of_caption(NOW - timedelta(hours=2), NOW - timedelta(minutes=5), NOW)
    assert caption.startswith("Data as of 2026-12-08 07:30 UTC")
    assert "built at 09:25 UTC" in caption


def test_empty_marts_say_so():
    assert as_of_caption(None, None, NOW) == "No messages in the marts yet."
