"""The set-based steps of a pass against a real PostgreSQL: enrollment, exits, waits,
conditions, actions, completion; leases and concurrent passes."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa

from engine.db import tenant_transaction
from engine.sequence import steps
from engine.tenants import create_tenant
from tests.engine.campaign_rows import (
    add_campaign,
    add_contact,
    add_event,
    enrollments,
)

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


@pytest.fixture
def tenant(database) -> uuid.UUID:
    tenant_id, _ = create_tenant(database.owner, "acme")
    return tenant_id


@pytest.fixture
def tx(database, tenant):
    """Run `fn(conn)` in one committed tenant transaction."""

    def run(fn):
        with tenant_transaction(database.app, tenant) as conn:
            return fn(conn)

    return run


def _contacts(conn, list_id, *names: str, domain: str = "example.com") -> dict[str, uuid.UUID]:
    return {n: add_contact(conn, f"{n}@{domain}", list_id=list_id) for n in names}


# -- enrollment ----------------------------------------------------------------------------------


def test_members_of_an_active_campaign_enter_its_first_live_step(tx, now):
    def setup(conn):
        c = add_campaign(
            conn,
            "c",
            now,
            [
                {"id": "old", "email": "gone", "removed": True},
                {"id": "pause", "wait": 2 * DAY},
                {"id": "intro", "email": "Hi"},
            ],
        )
        _contacts(conn, c.list_id, "ann", "bob")
        return c

    campaign = tx(setup)
    assert tx(lambda conn: steps.enroll(conn, now)) == 2
    rows = tx(lambda conn: enrollments(conn, campaign.id))
    assert {(r.status, r.step, r.next_run_at) for r in rows.values()} == {
        ("enrolled", "pause", now + 2 * DAY)
    }
    assert tx(lambda conn: steps.enroll(conn, now)) == 0


def test_entering_a_wait_until_in_the_past_is_due_now_and_an_email_at_once(tx, now):
    def setup(conn):
        past = add_campaign(
            conn, "past", now, [{"id": "w", "wait_until": now - DAY}], list_name="a"
        )
        future = add_campaign(
            conn, "future", now, [{"id": "w", "wait_until": now + DAY}], list_name="b"
        )
        email = add_campaign(conn, "email", now, [{"id": "e", "email": "Hi"}], list_name="c")
        for c in (past, future, email):
            add_contact(conn, f"x@{c.list_id}.example", list_id=c.list_id)
        return past, future, email

    past, future, email = tx(setup)
    assert tx(lambda conn: steps.enroll_by_campaign(conn, now)) == {
        "email": 1,
        "future": 1,
        "past": 1,
    }
    due = [
        next(iter(tx(lambda conn, c=c: enrollments(conn, c.id)).values())).next_run_at
        for c in (past, future, email)
    ]
    assert due == [now, now + DAY, now]


def test_suppressed_and_inactive_contacts_are_never_enrolled(tx, now):
    def setup(conn):
        c = add_campaign(conn, "c", now, [{"id": "e", "email": "Hi"}])
        add_contact(conn, "ok@example.com", list_id=c.list_id)
        add_contact(conn, "Gone@Example.com", list_id=c.list_id)
        add_contact(conn, "unsub@example.com", list_id=c.list_id, status="unsubscribed")
        conn.execute(
            sa.text(
                "insert into app.suppressions (tenant_id, email, reason) "
                "values (app.current_tenant_id(), 'gone@example.com', 'unsubscribe')"
            )
        )
        return c

    campaign = tx(setup)
    assert tx(lambda conn: steps.enroll(conn, now)) == 1
    assert list(tx(lambda conn: enrollments(conn, campaign.id))) == ["ok@example.com"]


@pytest.mark.parametrize("status", ["draft", "paused", "scheduled", "completed"])
def test_only_active_campaigns_enroll(tx, now, status):
    def setup(conn):
        c = add_campaign(conn, "c", now, [{"id": "e", "email": "Hi"}], status=status)
        add_contact(conn, "ok@example.com", list_id=c.list_id)

    tx(setup)
    assert tx(lambda conn: steps.enroll(conn, now)) == 0


def test_a_campaign_without_live_steps_or_past_its_end_enrolls_nobody(tx, now):
    def setup(conn):
        empty = add_campaign(conn, "empty", now, [{"id": "e", "email": "x", "removed": True}])
        ended = add_campaign(
            conn, "ended", now, [{"id": "e", "email": "x"}], list_name="other", end_at=now
        )
        add_contact(conn, "a@example.com", list_id=empty.list_id)
        add_contact(conn, "b@example.com", list_id=ended.list_id)

    tx(setup)
    assert tx(lambda conn: steps.enroll(conn, now)) == 0


def test_contacts_added_to_the_list_later_are_enrolled_by_the_next_pass(tx, now):
    campaign = tx(lambda conn: add_campaign(conn, "c", now, [{"id": "e", "email": "Hi"}]))
    tx(lambda conn: _contacts(conn, campaign.list_id, "ann"))
    assert tx(lambda conn: steps.enroll(conn, now)) == 1
    tx(lambda conn: _contacts(conn, campaign.list_id, "bob"))
    assert tx(lambda conn: steps.enroll(conn, now + HOUR)) == 1
    assert tx(lambda conn: enrollments(conn, campaign.id))["bob@example.com"].next_run_at == (
        now + HOUR
    )


# -- starting and completing ---------------------------------------------------------------------


def test_a_scheduled_campaign_goes_active_when_its_start_comes(tx, now):
    def setup(conn):
        for name, start in (("soon", now + HOUR), ("due", now), ("late", now - DAY)):
            add_campaign(
                conn,
                name,
                now,
                [{"id": "e", "email": "Hi"}],
                status="scheduled",
                start_at=start,
                list_name=name,
            )

    tx(setup)
    assert tx(lambda conn: steps.activate_scheduled(conn, now)) == 2
    status = tx(
        lambda conn: dict(conn.execute(sa.text("select name, status from app.campaigns")).all())
    )
    assert status == {"soon": "scheduled", "due": "active", "late": "active"}
    assert tx(lambda conn: steps.activate_scheduled(conn, now + HOUR)) == 1


def test_a_campaign_completes_once_no_enrollment_is_left_on_its_way(tx, now):
    def setup(conn):
        c = add_campaign(conn, "c", now, [{"id": "w", "wait": HOUR}])
        add_campaign(conn, "empty", now, [{"id": "w", "wait": HOUR}], list_name="none")
        _contacts(conn, c.list_id, "ann", "bob")
        steps.enroll(conn, now)
        return c

    campaign = tx(setup)
    assert tx(lambda conn: steps.complete_campaigns(conn, now)) == 0
    moved = tx(lambda conn: steps.advance(conn, now + HOUR))
    assert (moved.advanced, moved.completed) == (2, 2)
    assert tx(lambda conn: steps.complete_campaigns(conn, now + HOUR)) == 1
    status = tx(
        lambda conn: conn.execute(
            sa.text("select status, completed_at from app.campaigns where id = :id"),
            {"id": campaign.id},
        ).one()
    )
    assert tuple(status) == ("completed", now + HOUR)


# -- waits ---------------------------------------------------------------------------------------


def test_a_finished_wait_moves_on_and_enters_the_next_step(tx, now):
    def setup(conn):
        c = add_campaign(
            conn,
            "c",
            now,
            [{"id": "w1", "wait": DAY}, {"id": "w2", "wait": 3 * DAY}, {"id": "e", "email": "x"}],
        )
        _contacts(conn, c.list_id, "ann")
        steps.enroll(conn, now)
        conn.execute(sa.text("update app.campaign_contacts set wait_reason = 'window'"))
        return c

    campaign = tx(setup)
    early = tx(lambda conn: steps.advance(conn, now + DAY - timedelta(seconds=1)))
    assert early.advanced == 0
    moved = tx(lambda conn: steps.advance(conn, now + DAY))
    assert moved.advanced == 1
    row = tx(lambda conn: enrollments(conn, campaign.id))["ann@example.com"]
    assert (row.status, row.step, row.next_run_at, row.steps_completed, row.wait_reason) == (
        "active",
        "w2",
        now + 4 * DAY,
        1,
        None,
    )
    moved = tx(lambda conn: steps.advance(conn, now + 4 * DAY))
    row = tx(lambda conn: enrollments(conn, campaign.id))["ann@example.com"]
    assert (moved.advanced, row.step, row.next_run_at, row.steps_completed) == (
        1,
        "e",
        now + 4 * DAY,
        2,
    )


def test_a_wait_is_exact_elapsed_time_whatever_the_session_time_zone(database, tenant, now):
    with tenant_transaction(database.app, tenant) as conn:
        conn.execute(sa.text("set local timezone = 'Europe/Berlin'"))
        c = add_campaign(conn, "c", now, [{"id": "w", "wait": 200 * DAY}])
        add_contact(conn, "ann@example.com", list_id=c.list_id)
        steps.enroll(conn, now)  # 200 days crosses the March change to summer time
        due = enrollments(conn, c.id)["ann@example.com"].next_run_at
    assert due == now + 200 * DAY


def test_the_last_step_completes_the_enrollment(tx, now):
    def setup(conn):
        c = add_campaign(conn, "c", now, [{"id": "w", "wait": HOUR}])
        _contacts(conn, c.list_id, "ann")
        steps.enroll(conn, now)
        return c

    campaign = tx(setup)
    moved = tx(lambda conn: steps.advance(conn, now + 2 * HOUR))
    row = tx(lambda conn: enrollments(conn, campaign.id))["ann@example.com"]
    assert (moved.advanced, moved.completed) == (1, 1)
    assert (row.status, row.step, row.next_run_at, row.completed_at) == (
        "completed",
        "w",
        None,
        now + 2 * HOUR,
    )


def test_a_paused_campaign_does_not_move(tx, now):
    def setup(conn):
        c = add_campaign(conn, "c", now, [{"id": "w", "wait": HOUR}, {"id": "e", "email": "x"}])
        _contacts(conn, c.list_id, "ann")
        steps.enroll(conn, now)
        conn.execute(sa.text("update app.campaigns set status = 'paused'"))
        return c

    campaign = tx(setup)
    assert tx(lambda conn: steps.advance(conn, now + DAY)).advanced == 0
    assert tx(lambda conn: enrollments(conn, campaign.id))["ann@example.com"].step == "w"


# -- conditions ----------------------------------------------------------------------------------


def test_a_condition_sends_each_enrollment_down_its_branch(tx, now):
    def setup(conn):
        c = add_campaign(
            conn,
            "c",
            now,
            [
                {"id": "intro", "email": "Hi"},
                {"id": "warm?", "condition": {"opened": "intro"}, "then": "warm", "else": "cold"},
                {"id": "warm", "email": "Warm", "next": "end"},
                {"id": "cold", "wait": 2 * DAY},
                {"id": "bye", "email": "Bye"},
            ],
        )
        people = _contacts(conn, c.list_id, "ann", "bob", "cid")
        steps.enroll(conn, now)
        conn.execute(
            sa.text("update app.campaign_contacts set current_step_id = :step, status = 'active'"),
            {"step": c.steps["warm?"]},
        )
        add_event(conn, "open", people["ann"], c.id, c.steps["intro"], now)
        add_event(conn, "click", people["bob"], c.id, c.steps["intro"], now)
        # A privacy proxy's prefetch is nobody's open.
        proxy = "Apple Mail Privacy Protection"
        add_event(conn, "open", people["cid"], c.id, c.steps["intro"], now, machine_reason=proxy)
        return c

    campaign = tx(setup)
    moved = tx(lambda conn: steps.advance(conn, now))
    rows = tx(lambda conn: enrollments(conn, campaign.id))
    assert moved.advanced == 3
    assert {e: (r.step, r.next_run_at) for e, r in rows.items()} == {
        "ann@example.com": ("warm", now),
        "bob@example.com": ("cold", now + 2 * DAY),
        "cid@example.com": ("cold", now + 2 * DAY),
    }


def test_a_condition_branch_to_the_end_completes(tx, now):
    def setup(conn):
        c = add_campaign(
            conn,
            "c",
            now,
            [
                {
                    "id": "hot?",
                    "condition": {"lead_score": {"gte": 50}},
                    "then": "end",
                    "else": "e",
                },
                {"id": "e", "email": "x"},
            ],
        )
        add_contact(conn, "hot@example.com", list_id=c.list_id, lead_score=80)
        add_contact(conn, "cool@example.com", list_id=c.list_id, lead_score=10)
        add_contact(conn, "none@example.com", list_id=c.list_id)
        steps.enroll(conn, now)
        return c

    campaign = tx(setup)
    moved = tx(lambda conn: steps.advance(conn, now))
    rows = tx(lambda conn: enrollments(conn, campaign.id))
    assert (moved.advanced, moved.completed) == (3, 1)
    assert {e: (r.status, r.step) for e, r in rows.items()} == {
        "hot@example.com": ("completed", "hot?"),
        "cool@example.com": ("active", "e"),
        "none@example.com": ("active", "e"),
    }


def test_engagement_counts_only_this_campaign_and_contact(tx, now):
    def setup(conn):
        a = add_campaign(
            conn,
            "a",
            now,
            [
                {"id": "intro", "email": "Hi"},
                {"id": "any?", "condition": {"replied": "any"}, "then": "yes", "else": "no"},
                {"id": "yes", "email": "Y", "next": "end"},
                {"id": "no", "email": "N"},
            ],
        )
        b = add_campaign(conn, "b", now, [{"id": "intro", "email": "Hi"}], list_name="b")
        people = _contacts(conn, a.list_id, "ann", "bob", "cid")
        add_event(conn, "reply", people["ann"], a.id, None, now)  # no step known: still "any"
        add_event(conn, "reply", people["bob"], b.id, b.steps["intro"], now)  # another campaign
        steps.enroll(conn, now)
        conn.execute(
            sa.text("update app.campaign_contacts set current_step_id = :s where campaign_id = :c"),
            {"s": a.steps["any?"], "c": a.id},
        )
        return a

    campaign = tx(setup)
    tx(lambda conn: steps.advance(conn, now))
    rows = tx(lambda conn: enrollments(conn, campaign.id))
    assert {e: r.step for e, r in rows.items()} == {
        "ann@example.com": "yes",
        "bob@example.com": "no",
        "cid@example.com": "no",
    }


def test_one_pass_walks_wait_condition_and_action_in_a_row(tx, now):
    def setup(conn):
        c = add_campaign(
            conn,
            "c",
            now,
            [
                {"id": "pause", "wait": DAY},
                {
                    "id": "vip?",
                    "condition": {"field": "tags", "contains": "vip"},
                    "then": "tag",
                    "else": "end",
                },
                {"id": "tag", "action": {"tag": "followed-up"}},
                {"id": "e", "email": "x"},
            ],
        )
        add_contact(conn, "vip@example.com", list_id=c.list_id, tags=["vip"])
        add_contact(conn, "other@example.com", list_id=c.list_id)
        steps.enroll(conn, now)
        return c

    campaign = tx(setup)
    moved = tx(lambda conn: steps.advance(conn, now + DAY))
    rows = tx(lambda conn: enrollments(conn, campaign.id))
    assert (moved.advanced, moved.completed) == (5, 1)  # 2 waits, 2 conditions, 1 action
    assert {e: (r.status, r.step, r.steps_completed) for e, r in rows.items()} == {
        "vip@example.com": ("active", "e", 3),
        "other@example.com": ("completed", "vip?", 2),
    }
    tags = tx(
        lambda conn: conn.execute(
            sa.text("select tags from app.contacts where email = 'vip@example.com'")
        ).scalar_one()
    )
    assert tags == ["vip", "followed-up"]


def test_a_step_whose_condition_cannot_run_exits_its_enrollments_only(tx, now):
    def setup(conn):
        c = add_campaign(
            conn,
            "c",
            now,
            [
                {"id": "bad", "condition": {"opened": "nowhere"}, "then": "end", "else": "end"},
            ],
        )
        ok = add_campaign(conn, "ok", now, [{"id": "w", "wait": HOUR}], list_name="ok")
        add_contact(conn, "ann@example.com", list_id=c.list_id)
        add_contact(conn, "bob@example.com", list_id=ok.list_id)
        steps.enroll(conn, now)
        return c, ok

    bad, ok = tx(setup)
    moved = tx(lambda conn: steps.advance(conn, now + HOUR))
    assert moved.exited == {"invalid step": 1}
    assert moved.advanced == 1
    assert tx(lambda conn: enrollments(conn, bad.id))["ann@example.com"].exit_reason == (
        "invalid step"
    )
    assert tx(lambda conn: enrollments(conn, ok.id))["bob@example.com"].status == "completed"


# -- actions -------------------------------------------------------------------------------------


def _contact(conn, email):
    return conn.execute(
        sa.text("select * from app.contacts where email = :email"), {"email": email}
    ).one()


def _run_action(tx, now, action, **contact):
    """One contact through a campaign [action, email]; the contact and its enrollment after."""

    def setup(conn):
        c = add_campaign(
            conn, "c", now, [{"id": "act", "action": action}, {"id": "e", "email": "x"}]
        )
        add_contact(conn, "ann@example.com", list_id=c.list_id, **contact)
        steps.enroll(conn, now)
        return c

    campaign = tx(setup)
    moved = tx(lambda conn: steps.advance(conn, now))
    row = tx(lambda conn: enrollments(conn, campaign.id))["ann@example.com"]
    return moved, tx(lambda conn: _contact(conn, "ann@example.com")), row


def test_tag_adds_a_tag_once_and_moves_on(tx, now):
    moved, contact, row = _run_action(tx, now, {"tag": "cold"}, tags=["cold", "x"])
    assert contact.tags == ["cold", "x"]
    assert (moved.advanced, row.step, row.steps_completed) == (1, "e", 1)


def test_untag_removes_the_tag(tx, now):
    _, contact, _ = _run_action(tx, now, {"untag": "cold"}, tags=["cold", "x"])
    assert contact.tags == ["x"]


def test_set_writes_columns_and_attributes_and_null_clears(tx, now):
    action = {
        "set": {"company": "Globex", "lead_score": 7, "city": None, "Plan": "gold", "Old": None}
    }
    _, contact, row = _run_action(
        tx,
        now,
        action,
        company="Acme",
        city="Paris",
        lead_score=1,
        attributes={"Old": "x", "Keep": "y"},
    )
    assert (contact.company, contact.lead_score, contact.city) == ("Globex", 7, None)
    assert contact.attributes == {"Keep": "y", "Plan": "gold"}
    assert contact.updated_at == now
    assert row.step == "e"


def test_add_to_list_creates_the_list_and_the_next_pass_enrolls_its_campaign(tx, now):
    def other(conn):
        return add_campaign(conn, "nurture", now, [{"id": "e", "email": "x"}], list_name="nurture")

    nurture = tx(other)
    moved, _, _ = _run_action(tx, now, {"add_to_list": "nurture"})
    assert moved.advanced == 1
    assert tx(lambda conn: steps.enroll(conn, now)) == 1
    assert list(tx(lambda conn: enrollments(conn, nurture.id))) == ["ann@example.com"]


def test_add_to_list_creates_a_missing_list_only_when_someone_moves(tx, now):
    _run_action(tx, now, {"add_to_list": "Hot leads"})
    members = tx(
        lambda conn: conn.execute(
            sa.text(
                "select l.name, count(m.contact_id) from app.contact_lists l "
                "left join app.contact_list_members m on m.list_id = l.id "
                "group by l.name order by l.name"
            )
        ).all()
    )
    assert [tuple(r) for r in members] == [("Hot leads", 1), ("leads", 1)]
    tx(
        lambda conn: add_campaign(
            conn, "idle", now, [{"id": "a", "action": {"add_to_list": "x"}}], list_name="idle"
        )
    )
    tx(lambda conn: steps.advance(conn, now))
    names = tx(lambda conn: conn.execute(sa.text("select name from app.contact_lists")).scalars())
    assert "x" not in set(names)


def test_remove_from_list_takes_the_contact_off_the_list(tx, now):
    def setup(conn):
        c = add_campaign(conn, "c", now, [{"id": "a", "action": {"remove_from_list": "leads"}}])
        _contacts(conn, c.list_id, "ann")
        steps.enroll(conn, now)

    tx(setup)
    tx(lambda conn: steps.advance(conn, now))
    left = tx(
        lambda conn: conn.execute(sa.text("select count(*) from app.contact_list_members")).scalar()
    )
    assert left == 0


def test_exit_ends_the_enrollment_with_its_reason(tx, now):
    moved, _, row = _run_action(tx, now, {"exit": "not a fit"})
    assert moved.exited == {"not a fit": 1}
    assert moved.advanced == 0
    assert (row.status, row.exit_reason, row.exited_at, row.next_run_at, row.step) == (
        "exited",
        "not a fit",
        now,
        None,
        "act",
    )


def test_an_action_reaching_the_end_completes(tx, now):
    def setup(conn):
        c = add_campaign(conn, "c", now, [{"id": "a", "action": {"tag": "done"}}])
        _contacts(conn, c.list_id, "ann")
        steps.enroll(conn, now)
        return c

    campaign = tx(setup)
    moved = tx(lambda conn: steps.advance(conn, now))
    assert (moved.advanced, moved.completed) == (1, 1)
    assert tx(lambda conn: enrollments(conn, campaign.id))["ann@example.com"].status == "completed"


# -- leases and concurrency ----------------------------------------------------------------------


def test_an_enrollment_under_an_unexpired_lease_is_never_touched(tx, now):
    def setup(conn):
        c = add_campaign(
            conn, "c", now, [{"id": "a", "action": {"tag": "t"}}, {"id": "e", "email": "x"}]
        )
        people = _contacts(conn, c.list_id, "held", "free", "late")
        steps.enroll(conn, now)
        lease = sa.text(
            "update app.campaign_contacts set lease_owner = 'w', lease_expires_at = :until "
            "where contact_id = :id"
        )
        conn.execute(lease, {"id": people["held"], "until": now + timedelta(seconds=1)})
        conn.execute(lease, {"id": people["late"], "until": now})  # runs out at now
        conn.execute(sa.text("update app.contacts set status = 'bounced'"))
        return c

    campaign = tx(setup)
    moved = tx(lambda conn: steps.advance(conn, now))
    assert moved.advanced == 2
    exited = tx(lambda conn: steps.exit_stopped(conn, now))
    assert exited == {"contact bounced": 2}
    rows = tx(lambda conn: enrollments(conn, campaign.id))
    held = rows["held@example.com"]
    assert (held.status, held.step, held.lease_owner) == ("enrolled", "a", "w")
    assert rows["late@example.com"].status == "exited"


def test_two_passes_at_once_apply_each_action_once(database, tenant, now):
    """Pass A tags then untags; if pass B re-ran the tag step on rows A had moved on, the tag
    would be back. B starts while A's transaction is open and must move nothing."""
    with tenant_transaction(database.app, tenant) as conn:
        c = add_campaign(
            conn,
            "c",
            now,
            [
                {"id": "tag", "action": {"tag": "t"}},
                {"id": "untag", "action": {"untag": "t"}},
                {"id": "e", "email": "x"},
            ],
        )
        for i in range(200):
            add_contact(conn, f"p{i}@example.com", list_id=c.list_id)
        steps.enroll(conn, now)

    results: dict[str, steps.StepCounts] = {}
    a_done = threading.Event()

    def pass_b():
        with tenant_transaction(database.app, tenant) as conn:
            results["b"] = steps.advance(conn, now)

    with tenant_transaction(database.app, tenant) as conn:
        results["a"] = steps.advance(conn, now)
        b = threading.Thread(target=pass_b)
        b.start()
        b.join(timeout=1)  # B sees due rows A has locked and must wait for A
        a_done.set()
    b.join(timeout=30)
    assert not b.is_alive()
    assert results["a"].advanced == 400
    assert results["b"].advanced == 0
    with tenant_transaction(database.app, tenant) as conn:
        assert (
            conn.execute(sa.text("select count(*) from app.contacts where tags <> '{}'")).scalar()
            == 0
        )
        rows = enrollments(conn, c.id)
    assert {(r.step, r.steps_completed) for r in rows.values()} == {("e", 2)}


def test_two_passes_started_together_move_every_enrollment_once(database, tenant, now):
    with tenant_transaction(database.app, tenant) as conn:
        c = add_campaign(
            conn,
            "c",
            now,
            [
                {"id": "w", "wait": HOUR},
                {"id": "tag", "action": {"tag": "t"}},
                {"id": "untag", "action": {"untag": "t"}},
                {"id": "e", "email": "x"},
            ],
        )
        for i in range(500):
            add_contact(conn, f"p{i}@example.com", list_id=c.list_id)
        steps.enroll(conn, now)

    start = threading.Barrier(2)
    results: list[steps.StepCounts] = []
    errors: list[BaseException] = []

    def one_pass():
        try:
            with tenant_transaction(database.app, tenant) as conn:
                start.wait()
                results.append(steps.advance(conn, now + HOUR))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one_pass) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert sum(r.advanced for r in results) == 1500
    with tenant_transaction(database.app, tenant) as conn:
        assert (
            conn.execute(sa.text("select count(*) from app.contacts where tags <> '{}'")).scalar()
            == 0
        )
        assert {(r.step, r.steps_completed) for r in enrollments(conn, c.id).values()} == {("e", 3)}


# -- exits ---------------------------------------------------------------------------------------


def test_suppressed_and_inactive_contacts_exit_with_their_reason(tx, now):
    def setup(conn):
        c = add_campaign(conn, "c", now, [{"id": "w", "wait": DAY}])
        people = _contacts(conn, c.list_id, "ok", "sup", "unsub", "bounce", "complain")
        steps.enroll(conn, now)
        conn.execute(
            sa.text(
                "insert into app.suppressions (tenant_id, email, reason) "
                "values (app.current_tenant_id(), 'SUP@example.com', 'manual')"
            )
        )
        for name, status in (
            ("unsub", "unsubscribed"),
            ("bounce", "bounced"),
            ("complain", "complained"),
        ):
            conn.execute(
                sa.text("update app.contacts set status = :s where id = :id"),
                {"s": status, "id": people[name]},
            )
        return c

    campaign = tx(setup)
    assert tx(lambda conn: steps.exit_stopped(conn, now)) == {
        "suppressed": 1,
        "contact unsubscribed": 1,
        "contact bounced": 1,
        "contact complained": 1,
    }
    rows = tx(lambda conn: enrollments(conn, campaign.id))
    assert rows["ok@example.com"].status == "enrolled"
    assert rows["sup@example.com"].exited_at == now
    assert tx(lambda conn: steps.exit_stopped(conn, now)) == {}
    # the step history has each exit once, from the step it stood on, with its reason
    history = tx(
        lambda conn: conn.execute(
            sa.text(
                "select c.email, t.from_step_id = :w as from_wait, t.to_step_id, t.outcome, "
                "t.exit_reason, t.occurred_at from app.step_transitions t "
                "join app.contacts c on c.id = t.contact_id where t.outcome = 'exited'"
            ),
            {"w": campaign.steps["w"]},
        ).all()
    )
    assert sorted((h.email, h.exit_reason) for h in history) == [
        ("bounce@example.com", "contact bounced"),
        ("complain@example.com", "contact complained"),
        ("sup@example.com", "suppressed"),
        ("unsub@example.com", "contact unsubscribed"),
    ]
    assert {(h.from_wait, h.to_step_id, h.occurred_at) for h in history} == {(True, None, now)}


def _reply_setup(tx, now, stop_on_reply):
    def setup(conn):
        c = add_campaign(
            conn,
            "c",
            now,
            [{"id": "e", "email": "x"}, {"id": "w", "wait": DAY}],
            stop_on_reply=stop_on_reply,
        )
        other = add_campaign(conn, "other", now, [{"id": "w", "wait": DAY}])
        ann = add_contact(conn, "ann@acme.example", list_id=c.list_id)
        add_contact(conn, "bob@ACME.example", list_id=c.list_id)
        add_contact(conn, "cid@globex.example", list_id=c.list_id)
        steps.enroll(conn, now)
        add_event(conn, "reply", ann, c.id, c.steps["e"], now)
        return c, other

    return tx(setup)


def test_a_reply_stops_the_contact(tx, now):
    campaign, other = _reply_setup(tx, now, "contact")
    assert tx(lambda conn: steps.exit_stopped(conn, now)) == {"replied": 1}
    rows = tx(lambda conn: enrollments(conn, campaign.id))
    assert {e: r.status for e, r in rows.items()} == {
        "ann@acme.example": "exited",
        "bob@ACME.example": "enrolled",
        "cid@globex.example": "enrolled",
    }
    # the same contact in another campaign goes on: the reply was to this one
    assert {r.status for r in tx(lambda conn: enrollments(conn, other.id)).values()} == {"enrolled"}


def test_a_reply_stops_everyone_at_the_company_with_company_scope(tx, now):
    campaign, other = _reply_setup(tx, now, "company")
    assert tx(lambda conn: steps.exit_stopped(conn, now)) == {
        "replied": 1,
        "company replied": 1,
    }
    rows = tx(lambda conn: enrollments(conn, campaign.id))
    assert {e: (r.status, r.exit_reason) for e, r in rows.items()} == {
        "ann@acme.example": ("exited", "replied"),
        "bob@ACME.example": ("exited", "company replied"),
        "cid@globex.example": ("enrolled", None),
    }
    assert {r.status for r in tx(lambda conn: enrollments(conn, other.id)).values()} == {"enrolled"}


def test_a_reply_stops_nobody_with_never(tx, now):
    _reply_setup(tx, now, "never")
    assert tx(lambda conn: steps.exit_stopped(conn, now)) == {}


def test_enrollments_still_waiting_when_the_campaign_ends_exit(tx, now):
    def setup(conn):
        c = add_campaign(conn, "c", now, [{"id": "w", "wait": DAY}], end_at=now + HOUR)
        _contacts(conn, c.list_id, "ann")
        steps.enroll(conn, now)
        return c

    campaign = tx(setup)
    assert tx(lambda conn: steps.exit_stopped(conn, now)) == {}
    assert tx(lambda conn: steps.exit_stopped(conn, now + HOUR)) == {"campaign ended": 1}
    row = tx(lambda conn: enrollments(conn, campaign.id))["ann@example.com"]
    assert (row.status, row.exit_reason) == ("exited", "campaign ended")


def test_a_rolled_back_pass_leaves_nothing_behind(database, tenant, now):
    with tenant_transaction(database.app, tenant) as conn:
        c = add_campaign(
            conn,
            "c",
            now,
            [{"id": "a", "action": {"add_to_list": "new list"}}, {"id": "e", "email": "x"}],
        )
        add_contact(conn, "ann@example.com", list_id=c.list_id)
    with database.app.connect() as raw:
        with raw.begin() as txn:
            raw.execute(sa.text("select app.bind_tenant(:t)"), {"t": tenant})
            assert steps.enroll(raw, now) == 1
            assert steps.advance(raw, now).advanced == 1
            txn.rollback()
    with tenant_transaction(database.app, tenant) as conn:
        assert enrollments(conn, c.id) == {}
        names = set(conn.execute(sa.text("select name from app.contact_lists")).scalars())
    assert names == {"leads"}


def test_a_step_deleted_under_an_enrollment_is_no_move_in_its_history(tx, now, database):
    def setup(conn):
        c = add_campaign(conn, "c", now, [{"id": "w", "wait": DAY}])
        _contacts(conn, c.list_id, "ann")
        steps.enroll(conn, now)
        return c

    campaign = tx(setup)
    history = sa.text("select outcome, to_step_id from app.step_transitions order by id")
    assert tx(lambda conn: conn.execute(history).all()) == [("entered", campaign.steps["w"])]
    with database.owner.begin() as conn:  # as a tenant's deletion would, outside any tenant
        conn.execute(
            sa.text("delete from app.campaign_steps where id = :id"), {"id": campaign.steps["w"]}
        )
    # the enrollment lost its step (SET NULL) and the history gained nothing
    assert tx(lambda conn: conn.execute(history).all()) == [("entered", campaign.steps["w"])]
