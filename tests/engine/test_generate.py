"""`penguin generate`'s dataset: the shape asked for, realistic rates, the planted edge cases,
and marts that build on it."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from engine.generate import GenerateError, Shape, generate

_KINDS = sa.text(
    """
    select event_type, count(*) as n, count(*) filter (where is_machine) as machine
    from app.email_events group by 1
    """
)
_STATUSES = sa.text("select status, count(*) from app.sent_emails group by 1")
_PLANTED = sa.text(
    """
    select count(*) filter (where e.occurred_at < m.sent_at) as before_send,
           count(*) filter (where e.occurred_at > m.sent_at + interval '7 days') as late,
           count(*) filter (where e.event_type = 'bounce' and m.status = 'bounced'
                            and (e.payload ->> 'hard') = 'false') as refused_and_soft
    from app.email_events e join app.sent_emails m on m.id = e.sent_email_id
    """
)


def test_the_dataset_has_its_shape_its_rates_and_its_edge_cases(database, now):
    shape = Shape(tenants=2, contacts=2_000, sends=8_000, events=60_000, days=30, seed=3)
    done = generate(database, shape, now)
    assert done.tenants == ["gen-3-1", "gen-3-2"]
    assert done.messages == 8_000
    assert 0.85 * 60_000 < done.events < 1.15 * 60_000
    with database.analytics.connect() as conn:
        kinds = {r.event_type: r for r in conn.execute(_KINDS)}
        statuses = dict(conn.execute(_STATUSES).tuples().all())
        planted = conn.execute(_PLANTED).one()
        zones = (
            conn.execute(
                sa.text("select reporting_timezone from app.tenants where name like 'gen-3-%'")
            )
            .scalars()
            .all()
        )
    assert set(kinds) == {
        "delivered",
        "open",
        "click",
        "reply",
        "auto_reply",
        "bounce",
        "unsubscribe",
        "complaint",
    }
    assert kinds["open"].machine > 0 and kinds["open"].n > 4 * kinds["open"].machine
    assert {"sent", "bounced", "failed", "unknown"} <= set(statuses)
    assert planted.before_send > 0 and planted.late > 0 and planted.refused_and_soft > 0
    assert len(set(zones)) == 2

    with pytest.raises(GenerateError, match="tenants gen-3-\\* exist already"):
        generate(database, shape, now)


def test_a_shape_that_cannot_be_is_refused_naming_the_option():
    with pytest.raises(GenerateError, match="--contacts must be at least --tenants"):
        Shape(tenants=3, contacts=2)
    with pytest.raises(GenerateError, match="--days must be at least 1"):
        Shape(days=0)
