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
    assert 0.95 * 60_000 < done.events < 1.05 * 60_000, done.events  # the target, near enough
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


def test_the_set_based_foreign_key_check_finds_a_row_the_skipped_triggers_let_through(
    database, now
):
    """With the per-row checks off (as the bulk phase runs), an event of a message that does
    not exist is written; the check that replaces them names the key, and nothing stays."""
    from engine.generate import _LOADED, _check_foreign_keys, _tenant_load
    from engine.tenants import create_tenant

    tenant_id, _ = create_tenant(database.owner, "orphans")
    with pytest.raises(GenerateError, match="break its foreign key email_events_tenant_id_sent"):
        with _tenant_load(database, tenant_id) as load:
            assert load.as_app  # the embedded server's owner can become the application role
            assert load.skip_foreign_key_triggers() is False  # and skip the per-row checks
            load.conn.execute(
                sa.text(
                    "insert into app.email_events (tenant_id, event_type, sent_email_id, "
                    "occurred_at, recorded_at, dedup_key) values (app.current_tenant_id(), "
                    "'open', gen_random_uuid(), now(), now(), 'orphan')"
                )
            )
            _check_foreign_keys(load.conn, _LOADED)
    with database.owner.connect() as conn:
        assert conn.execute(sa.text("select count(*) from app.email_events")).scalar() == 0


def test_a_tenant_that_fails_is_removed_whole_and_its_seed_can_be_generated_again(
    database, now, monkeypatch
):
    from engine import generate as generating

    def broken(conn, tables):
        raise GenerateError("planted failure")

    monkeypatch.setattr(generating, "_check_foreign_keys", broken)
    shape = Shape(tenants=1, contacts=50, sends=100, events=500, days=3, seed=11)
    with pytest.raises(GenerateError, match="planted failure"):
        generate(database, shape, now)
    with database.owner.connect() as conn:
        assert conn.execute(_TENANTS_OF_SEED_11).scalar() == 0
        assert conn.execute(sa.text("select count(*) from app.sent_emails")).scalar() == 0
    monkeypatch.undo()
    assert generate(database, shape, now).messages == 100


_TENANTS_OF_SEED_11 = sa.text("select count(*) from app.tenants where name like 'gen-11-%'")


_HISTORY = sa.text(
    """
    select t.name,
           (select count(*) from app.campaign_contacts cc where cc.tenant_id = t.id) as enrolled,
           (select count(*) from app.step_transitions s where s.tenant_id = t.id
            and s.outcome = 'entered') as entered,
           (select count(*) from app.step_transitions s where s.tenant_id = t.id
            and s.outcome in ('completed', 'exited')) as ended,
           (select count(*) from app.campaign_contacts cc where cc.tenant_id = t.id
            and cc.status in ('completed', 'exited')) as finished,
           (select count(*) from app.step_transitions s
            join app.campaign_contacts cc on cc.id = s.campaign_contact_id
            where s.tenant_id = t.id and cc.tenant_id <> t.id) as foreign_rows
    from app.tenants t where t.name like 'gen-%' order by t.name
    """
)


def test_each_enrollment_has_one_history_whatever_was_generated_before(database, now):
    generate(database, Shape(1, 300, 1_000, 3_000, 30, seed=21), now)
    with database.analytics.connect() as conn:
        first = conn.execute(_HISTORY).all()
    generate(database, Shape(1, 300, 1_000, 3_000, 30, seed=22), now)
    with database.analytics.connect() as conn:
        both = conn.execute(_HISTORY).all()
    assert both[0] == first[0]  # a later seed leaves an earlier tenant's history alone
    for name, enrolled, entered, ended, finished, foreign_rows in both:
        assert enrolled == entered == ended == finished > 0, name
        assert foreign_rows == 0, name
