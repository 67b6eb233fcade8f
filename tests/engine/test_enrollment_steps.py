"""The database's rule for an enrollment's step (migration 0007): it is a step of the
enrollment's own campaign, whoever writes it and however many rows a statement writes."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from engine.db import tenant_transaction
from tests.engine.campaign_rows import add_campaign
from tests.factories import seed_tenant

REFUSED = "current_step_id is not a step of the enrollment's campaign"

_FIRST_STEP = sa.text(
    "select id from app.campaign_steps where campaign_id = :campaign order by step_order limit 1"
)
_MOVE_ALL = sa.text("update app.campaign_contacts set current_step_id = :step")
_STEPS_OF_ENROLLMENTS = sa.text("select current_step_id from app.campaign_contacts")


@pytest.fixture
def acme(database, now, tmp_path):
    return seed_tenant(database, "acme", now, tmp_path)


def test_a_statement_moving_enrollments_onto_another_campaigns_step_is_refused_whole(
    database, acme, now
):
    with tenant_transaction(database.app, acme.tenant_id) as conn:
        other = add_campaign(conn, "other", now, [{"id": "hello", "email": "Hi"}])
    with (
        pytest.raises(sa.exc.IntegrityError, match=REFUSED),
        tenant_transaction(database.app, acme.tenant_id) as conn,
    ):
        conn.execute(_MOVE_ALL, {"step": other.steps["hello"]})
    with tenant_transaction(database.app, acme.tenant_id) as conn:
        own = conn.execute(_FIRST_STEP, {"campaign": acme.campaign_id}).scalar_one()
        assert set(conn.execute(_STEPS_OF_ENROLLMENTS).scalars()) == {own}


def test_an_enrollment_cannot_stand_on_another_tenants_step(database, acme, now, tmp_path):
    bravo = seed_tenant(database, "bravo", now, tmp_path)
    with tenant_transaction(database.app, bravo.tenant_id) as conn:
        theirs = conn.execute(_FIRST_STEP, {"campaign": bravo.campaign_id}).scalar_one()
    with (
        pytest.raises(sa.exc.IntegrityError, match=REFUSED),
        tenant_transaction(database.app, acme.tenant_id) as conn,
    ):
        conn.execute(_MOVE_ALL, {"step": theirs})
    # The owner sees every row, and the rule holds for it too.
    with pytest.raises(sa.exc.IntegrityError, match=REFUSED), database.owner.begin() as conn:
        conn.execute(
            sa.text(
                "update app.campaign_contacts set current_step_id = :step where tenant_id = :t"
            ),
            {"step": theirs, "t": acme.tenant_id},
        )


def test_an_enrollment_inserted_on_a_step_that_does_not_exist_is_refused(database, acme, now):
    import uuid

    with tenant_transaction(database.app, acme.tenant_id) as conn:
        other = add_campaign(conn, "other", now, [{"id": "hello", "email": "Hi"}])
    with (
        pytest.raises(sa.exc.IntegrityError, match=REFUSED),
        tenant_transaction(database.app, acme.tenant_id) as conn,
    ):
        conn.execute(
            sa.text(
                """insert into app.campaign_contacts
                       (tenant_id, campaign_id, contact_id, status, current_step_id)
                   select m.tenant_id, :campaign, m.contact_id, 'active', :step
                   from app.contact_list_members m"""
            ),
            {"campaign": other.id, "step": uuid.uuid4()},
        )


def test_moving_onto_a_step_of_the_own_campaign_and_off_every_step_are_allowed(database, acme, now):
    with tenant_transaction(database.app, acme.tenant_id) as conn:
        own = conn.execute(_FIRST_STEP, {"campaign": acme.campaign_id}).scalar_one()
        assert conn.execute(_MOVE_ALL, {"step": own}).rowcount == 3
        assert conn.execute(_MOVE_ALL, {"step": None}).rowcount == 3


def test_the_engines_role_cannot_delete_a_step(database, acme):
    # Steps leave a campaign by being marked removed; nothing the engine runs deletes one, so
    # no step can disappear from under an enrollment that a statement is moving onto it.
    with (
        pytest.raises(sa.exc.ProgrammingError, match="permission denied for table campaign_steps"),
        tenant_transaction(database.app, acme.tenant_id) as conn,
    ):
        conn.execute(sa.text("delete from app.campaign_steps"))


def test_a_step_the_owner_deletes_leaves_the_enrollments_on_it_on_no_step(database, acme):
    with database.owner.begin() as conn:
        conn.execute(
            sa.text("delete from app.campaign_steps where tenant_id = :t"), {"t": acme.tenant_id}
        )
        steps = conn.execute(
            sa.text("select current_step_id from app.campaign_contacts where tenant_id = :t"),
            {"t": acme.tenant_id},
        )
        assert list(steps.scalars()) == [None] * 3


def test_a_steps_keys_never_change(database, acme, now):
    with tenant_transaction(database.app, acme.tenant_id) as conn:
        other = add_campaign(conn, "other", now, [{"id": "hello", "email": "Hi"}])
    for change, params in [
        ("campaign_id = :other", {"other": other.id}),
        ("id = gen_random_uuid()", {}),
    ]:
        with (
            pytest.raises(sa.exc.IntegrityError, match="a step's id, tenant and campaign"),
            tenant_transaction(database.app, acme.tenant_id) as conn,
        ):
            conn.execute(
                sa.text(f"update app.campaign_steps set {change} where campaign_id = :c"),
                {**params, "c": acme.campaign_id},
            )
    with tenant_transaction(database.app, acme.tenant_id) as conn:  # any other column may
        update = sa.text("update app.campaign_steps set subject = 'New' where campaign_id = :c")
        assert conn.execute(update, {"c": acme.campaign_id}).rowcount == 1
