from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from alembic import command

from engine import migrate


def test_upgrade_is_at_head_and_idempotent(database):
    assert migrate.current_revision(database) == migrate.head_revision()
    assert migrate.upgrade(database) == migrate.head_revision()


def test_upgrade_leaves_a_default_tenant(database):
    with database.owner.connect() as conn:
        names = conn.execute(sa.text("select name from app.tenants")).scalars().all()
    assert names == ["default"]


def test_downgrade_to_base_and_upgrade_again(database):
    config = migrate.alembic_config()
    with database.owner.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "base")
    with database.owner.connect() as conn:
        assert conn.execute(sa.text("select to_regclass('app.contacts')")).scalar() is None
    assert migrate.upgrade(database) == migrate.head_revision()


def test_engine_hot_queries_have_indexes(database):
    with database.owner.connect() as conn:
        indexes = set(
            conn.execute(
                sa.text("select indexname from pg_indexes where schemaname = 'app'")
            ).scalars()
        )
    assert {
        "campaign_contacts_due_idx",
        "suppressions_email_key",
        "email_events_message_idx",
        "contacts_email_key",
    } <= indexes


def test_role_passwords_come_from_the_settings(database):
    import dataclasses

    from engine.db import Database

    settings = dataclasses.replace(database.settings, app_password="s3cret-app")
    try:
        migrate.upgrade(Database(settings, owner_url=database.owner_url))
        with database.owner.connect() as conn:
            stored = conn.execute(
                sa.text("select rolpassword from pg_authid where rolname = 'penguin_app'")
            ).scalar()
    finally:  # roles are shared by every database of the test server
        with database.owner.begin() as conn:
            conn.execute(sa.text("alter role penguin_app password null"))
    assert stored is not None and stored.startswith("SCRAM-SHA-256$")
    assert "s3cret-app" not in stored


def test_upgrading_past_0007_refuses_enrollments_on_another_campaigns_step(database, now, tmp_path):
    """0007 checks an enrollment's step as a statement trigger, and more strictly than the key it
    replaces (the step must be of the enrollment's own campaign): rows written before are
    checked once, by the upgrade, which names what is wrong."""
    import pytest

    from engine.db import tenant_transaction
    from tests.engine.campaign_rows import add_campaign
    from tests.factories import seed_tenant

    tenant = seed_tenant(database, "acme", now, tmp_path)
    with tenant_transaction(database.app, tenant.tenant_id) as conn:
        other = add_campaign(conn, "other", now, [{"id": "hello", "email": "Hi"}])
    config = migrate.alembic_config()
    with database.owner.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0006")
        # The key of 0006 checks the tenant only: a step of the tenant's other campaign passes.
        conn.execute(
            sa.text("update app.campaign_contacts set current_step_id = :step"),
            {"step": other.steps["hello"]},
        )
    with pytest.raises(sa.exc.ProgrammingError, match="3 enrollment.s. stand on a step of another"):
        migrate.upgrade(database)


def test_upgrading_past_0019_leaves_an_address_with_the_tenant_that_registered_it_first(
    database, now
):
    """Before 0019 two tenants could register one sender address (the second read the first's
    replies); the upgrade keeps the first one's, and pauses the later one for good: it reads no
    mail and cannot be resumed."""
    import pytest

    from engine.db import tenant_transaction
    from engine.mailboxes.maildir import _accounts
    from engine.senders import SenderConfigError, create_sender, set_sender_active
    from engine.tenants import create_tenant

    acme, _ = create_tenant(database.owner, "acme")
    other, _ = create_tenant(database.owner, "other")
    with tenant_transaction(database.app, acme) as conn:
        first = create_sender(conn, "sales@acme.example", now=now)
    config = migrate.alembic_config()
    with database.owner.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0018")
    with tenant_transaction(database.app, other) as conn:
        conn.execute(
            sa.text(
                "insert into app.sender_accounts (tenant_id, email, created_at) "
                "values (app.current_tenant_id(), 'Sales@acme.example', :later)"
            ),
            {"later": now + timedelta(hours=1)},
        )
    migrate.upgrade(database)
    state = sa.text("select is_active, address_revoked_at is not null from app.sender_accounts")
    with tenant_transaction(database.app, acme) as conn:
        assert conn.execute(state).all() == [(True, False)]
    with tenant_transaction(database.app, other) as conn:
        assert conn.execute(state).all() == [(False, True)]
        with pytest.raises(SenderConfigError, match="cannot be resumed: another tenant"):
            set_sender_active(conn, "sales@acme.example", True, now)
    assert _accounts(database.app)["sales@acme.example"] == [(acme, first)]
