"""SMTP passwords stay with their tenant, and never travel in clear text to another machine.

The servers are real aiosmtpd servers that accept AUTH over a plain connection
(`auth_require_tls=False`) and record every login, so a test sees whether a password arrived.
"""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from engine.db import tenant_transaction
from engine.senders import (
    SenderConfigError,
    SmtpServer,
    check_password_env,
    create_sender,
    is_loopback_host,
)
from engine.sending.messenger import Outcome, OutgoingEmail, deliver
from engine.sending.scheduler import send_due
from engine.tenants import create_tenant
from tests.conftest import NOW, RecordingHandler, free_port
from tests.factories import seed_tenant

VICTIM_PASSWORD = "victim-s3cret"


@dataclasses.dataclass
class AuthServer:
    """An SMTP server that takes any login over a plain connection and keeps each one."""

    host: str
    port: int
    handler: RecordingHandler
    logins: list[tuple[str, str]]

    @property
    def messages(self):
        return self.handler.messages


def _start_auth_server(bind: str, host: str) -> tuple[Controller, AuthServer]:
    logins: list[tuple[str, str]] = []

    def authenticator(server, session, envelope, mechanism, auth_data):
        logins.append((auth_data.login.decode(), auth_data.password.decode()))
        return AuthResult(success=True)

    handler = RecordingHandler()
    port = free_port()
    controller = Controller(
        handler,
        hostname=bind,
        port=port,
        authenticator=authenticator,
        auth_require_tls=False,
    )
    controller.start()
    return controller, AuthServer(host, port, handler, logins)


@pytest.fixture
def auth_server() -> Iterator[AuthServer]:
    """A login-recording SMTP server on 127.0.0.1."""
    controller, server = _start_auth_server("127.0.0.1", "127.0.0.1")
    yield server
    controller.stop()


def _non_loopback_address() -> str | None:
    """An address of this machine that is not loopback (a UDP 'connect' sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))
            address = sock.getsockname()[0]
        except OSError:
            return None
    return None if is_loopback_host(address) else address


@pytest.fixture
def remote_auth_server() -> Iterator[AuthServer]:
    """A login-recording SMTP server reached through a non-loopback address of this machine:
    to the engine it is another host."""
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address")
    controller, server = _start_auth_server("0.0.0.0", address)
    yield server
    controller.stop()


def _point_sender_at(database, tenant, server: AuthServer, password_env: str) -> None:
    """Rewrite the tenant's sender row as the owner: as if written around `create_sender`."""
    with database.owner.begin() as conn:
        conn.execute(
            sa.text(
                "update app.sender_accounts set smtp_host = :host, smtp_port = :port, "
                "smtp_security = 'none', smtp_username = 'sales', smtp_password_env = :env "
                "where tenant_id = :tenant"
            ),
            {"host": server.host, "port": server.port, "env": password_env, "tenant": tenant},
        )


def _last_errors(database, tenant) -> set[tuple[str, str]]:
    with tenant_transaction(database.app, tenant.tenant_id) as conn:
        rows = conn.execute(sa.text("select status, last_error from app.sent_emails")).all()
    return {(r.status, r.last_error) for r in rows}


def test_password_variables_are_bound_to_their_tenant_by_name():
    assert check_password_env("PENGUIN_SMTP_ACME__MAIN", "acme")
    assert check_password_env("PENGUIN_SMTP_ACME_EU__MAIN_2", "acme-eu")
    for name in (
        "PENGUIN_SMTP_VICTIM__MAIN",  # another tenant's
        "PENGUIN_SMTP_ACME",  # no name
        "PENGUIN_SMTP_ACME_MAIN",  # single underscore: ambiguous
        "PENGUIN_SMTP_ACME__MAIN__X",  # a double underscore in the name
        "PENGUIN_SMTP_ACME___MAIN",  # a leading underscore in the name
        "PENGUIN_SMTP_ACME__MAIN_",  # a trailing underscore
        "PENGUIN_SMTP_ACME__MAIN\n",  # `match` would let a trailing newline through
        "PENGUIN_SMTP_ACME__main",
    ):
        with pytest.raises(SenderConfigError, match="must be named PENGUIN_SMTP_ACME__<NAME>"):
            check_password_env(name, "acme")


def test_loopback_hosts_are_recognized_without_dns():
    for host in ("localhost", "LOCALHOST.", "127.0.0.1", "127.8.9.10", "::1", "[::1]"):
        assert is_loopback_host(host), host
    for host in ("localhost.evil.example", "128.0.0.1", "10.0.0.1", "smtp.example.com", "::2"):
        assert not is_loopback_host(host), host


def test_an_account_naming_another_tenants_password_variable_is_refused(database, tmp_path):
    attacker = seed_tenant(database, "attacker", NOW, tmp_path, enroll=False)
    with pytest.raises(
        SenderConfigError,
        match=(
            "smtp_password_env 'PENGUIN_SMTP_VICTIM__MAIN' must be named "
            "PENGUIN_SMTP_ATTACKER__<NAME> for tenant attacker"
        ),
    ):
        with tenant_transaction(database.app, attacker.tenant_id) as conn:
            create_sender(
                conn,
                "sales@attacker.example",
                smtp_host="127.0.0.1",
                smtp_security="none",
                smtp_username="sales",
                smtp_password_env="PENGUIN_SMTP_VICTIM__MAIN",
            )


def test_another_tenants_password_written_directly_is_refused_at_send_time(
    database, auth_server, tmp_path
):
    seed_tenant(database, "victim", NOW, tmp_path, enroll=False)
    attacker = seed_tenant(database, "attacker", NOW, tmp_path)
    _point_sender_at(database, attacker.tenant_id, auth_server, "PENGUIN_SMTP_VICTIM__MAIN")
    env = {"PENGUIN_SMTP_VICTIM__MAIN": VICTIM_PASSWORD}
    report = send_due(database.app, SmtpServer("127.0.0.1", free_port()), NOW, env=env)
    assert auth_server.logins == []
    assert auth_server.messages == []
    assert report.retrying == 3 and report.sent == 0
    assert _last_errors(database, attacker) == {
        (
            "queued",
            "sender sales@attacker.example: smtp_password_env 'PENGUIN_SMTP_VICTIM__MAIN' must "
            "be named PENGUIN_SMTP_ATTACKER__<NAME> for tenant attacker (<NAME>: capital letters "
            "and digits, words joined by single '_')",
        )
    }


def test_a_login_in_clear_text_to_another_host_is_refused_when_the_account_is_saved(
    database, tmp_path
):
    tenant = seed_tenant(database, "acme", NOW, tmp_path, enroll=False)
    with pytest.raises(SenderConfigError, match="would send the password in clear text"):
        with tenant_transaction(database.app, tenant.tenant_id) as conn:
            create_sender(
                conn,
                "sales@acme.example",
                smtp_host="smtp.acme.example",
                smtp_security="none",
                smtp_username="sales",
                smtp_password_env="PENGUIN_SMTP_ACME__MAIN",
            )
    with tenant_transaction(database.app, tenant.tenant_id) as conn:  # encrypted: fine
        create_sender(
            conn,
            "sales@acme.example",
            smtp_host="smtp.acme.example",
            smtp_security="starttls",
            smtp_username="sales",
            smtp_password_env="PENGUIN_SMTP_ACME__MAIN",
        )


def test_a_login_in_clear_text_to_another_host_is_refused_at_send_time(
    database, remote_auth_server, tmp_path
):
    tenant = seed_tenant(database, "acme", NOW, tmp_path)
    _point_sender_at(database, tenant.tenant_id, remote_auth_server, "PENGUIN_SMTP_ACME__MAIN")
    env = {"PENGUIN_SMTP_ACME__MAIN": "acme-password"}
    report = send_due(database.app, SmtpServer("127.0.0.1", free_port()), NOW, env=env)
    assert report.retrying == 3
    assert remote_auth_server.logins == [] and remote_auth_server.messages == []
    [(status, error)] = _last_errors(database, tenant)
    assert status == "queued" and "would send the password in clear text" in error


def test_the_messenger_itself_never_logs_in_in_clear_text_to_another_host(remote_auth_server):
    server = SmtpServer(
        remote_auth_server.host, remote_auth_server.port, "none", "sales", "acme-password"
    )
    email = OutgoingEmail(
        message_id="m1@acme.example",
        sender_email="sales@acme.example",
        sender_name=None,
        recipient="r@example.com",
        subject="s",
        body_text="b",
        body_html=None,
        date=NOW,
    )
    [delivery] = deliver(server, [email])
    assert delivery.outcome is Outcome.RETRY
    assert "would send the password in clear text" in delivery.response
    assert remote_auth_server.logins == [] and remote_auth_server.messages == []


def test_the_tenants_own_password_logs_in_to_its_own_local_server(database, auth_server, tmp_path):
    tenant = seed_tenant(database, "acme", NOW, tmp_path)
    with tenant_transaction(database.app, tenant.tenant_id) as conn:
        create_sender(  # the same address: updates the campaign's sender
            conn,
            "sales@acme.example",
            "Acme Sales",
            smtp_host="localhost",
            smtp_port=auth_server.port,
            smtp_security="none",
            smtp_username="sales",
            smtp_password_env="PENGUIN_SMTP_ACME__MAIN",
            min_gap_seconds=0,
        )
    env = {"PENGUIN_SMTP_ACME__MAIN": "acme-password"}
    report = send_due(database.app, SmtpServer("127.0.0.1", free_port()), NOW, env=env)
    assert report.sent == 3 and len(auth_server.messages) == 3
    assert set(auth_server.logins) == {("sales", "acme-password")}


def _blocked_or_done(database, racer: threading.Thread) -> None:
    """Until `racer` waits on a lock of another transaction, or has finished."""
    deadline = time.monotonic() + 30
    waiting = sa.text(
        "select count(*) from pg_stat_activity "
        "where datname = current_database() and wait_event_type = 'Lock'"
    )
    while racer.is_alive() and time.monotonic() < deadline:
        with database.owner.connect() as conn:
            if conn.execute(waiting).scalar():
                return
        time.sleep(0.01)


def test_two_tenants_adding_one_address_at_once_cannot_both_have_it(database):
    """The database decides (a unique index across tenants), so a second `sender add` that
    runs while the first is not yet committed waits for it and is refused."""
    acme, _ = create_tenant(database.owner, "acme")
    other, _ = create_tenant(database.owner, "other")
    outcome: list[str] = []

    def add_in_other() -> None:
        try:
            with tenant_transaction(database.app, other) as conn:
                create_sender(conn, "shared@example.com", now=NOW)
            outcome.append("added")
        except SenderConfigError as exc:
            outcome.append(str(exc))

    with tenant_transaction(database.app, acme) as conn:
        create_sender(conn, "shared@example.com", now=NOW)
        racer = threading.Thread(target=add_in_other)
        racer.start()
        _blocked_or_done(database, racer)
    racer.join(timeout=30)
    assert len(outcome) == 1 and "already a sender account of another tenant" in outcome[0]
    assert "acme" not in outcome[0]
    with database.owner.connect() as conn:
        holders = conn.execute(
            sa.text(
                "select t.name from app.sender_accounts s join app.tenants t on t.id = s.tenant_id"
                " where lower(s.email) = 'shared@example.com'"
            )
        ).scalars()
        assert list(holders) == ["acme"]


def test_the_demo_cannot_take_a_sender_address_another_tenant_has(database):
    """Every way a sender account is made goes through `create_sender`, the demo's too."""
    from engine import demo

    squatter, _ = create_tenant(database.owner, "squatter")
    with tenant_transaction(database.app, squatter) as conn:
        create_sender(conn, "pat@penguinmails.example", now=NOW)
    with pytest.raises(SenderConfigError, match="already a sender account of another tenant"):
        demo.load_demo(database, NOW)
