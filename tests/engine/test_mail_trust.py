"""What an inbound message's headers can prove (engine.mailboxes.trust): only what the
receiving server stamped on top, never what its sender wrote below."""

from __future__ import annotations

from email import message_from_string, policy

import pytest

from engine.mailboxes.trust import addressed_to, authenticated

AUTHOR = "ann@example.com"
SERVER = "mx.acme.example"


def _message(*headers: str) -> object:
    text = "\n".join([*headers, f"From: Ann <{AUTHOR}>", "To: sales@acme.example", "", "Hi"])
    return message_from_string(text, policy=policy.compat32)


@pytest.mark.parametrize(
    "stamp",
    [
        f"Authentication-Results: {SERVER}; dmarc=pass header.from=example.com",
        f"Authentication-Results: {SERVER};\n dkim=pass (good) header.d=example.com",
        f"Authentication-Results: {SERVER}; spf=pass smtp.mailfrom=bounce@example.com",
        "Authentication-Results: MX.ACME.EXAMPLE 1; dkim=pass header.d=example.com",
    ],
)
def test_a_pass_for_the_authors_domain_stamped_on_top_by_a_trusted_server_vouches(stamp):
    assert authenticated(_message(stamp), AUTHOR, [SERVER])


@pytest.mark.parametrize(
    "headers",
    [
        # stamped by a server that is not the configured one
        ["Authentication-Results: mx.evil.example; dmarc=pass header.from=example.com"],
        # the sender's own pass below the receiving server's verdict
        [
            f"Authentication-Results: {SERVER}; dmarc=fail header.from=example.com",
            f"Authentication-Results: {SERVER}; dmarc=pass header.from=example.com",
        ],
        [
            "Authentication-Results: mx.other.example; none",
            f"Authentication-Results: {SERVER}; dmarc=pass header.from=example.com",
        ],
        # a pass for another domain: not the author's
        [f"Authentication-Results: {SERVER}; dkim=pass header.d=evil.example"],
        [f"Authentication-Results: {SERVER}; dkim=pass header.d=notexample.com"],
        [f"Authentication-Results: {SERVER}; spf=pass smtp.mailfrom=x@evil.example"],
        [f"Authentication-Results: {SERVER}; dmarc=pass header.from=evil.example"],
        [f"Authentication-Results: {SERVER}; dkim=neutral header.d=example.com"],
        [f"Authentication-Results: {SERVER}; dkim=pass header.d=example.com (unclosed"],
        [],
    ],
)
def test_anything_else_vouches_for_nobody(headers):
    assert not authenticated(_message(*headers), AUTHOR, [SERVER])


def test_nothing_is_authenticated_without_a_trusted_server():
    stamp = f"Authentication-Results: {SERVER}; dmarc=pass header.from=example.com"
    assert not authenticated(_message(stamp), AUTHOR, [])


def test_a_dkim_pass_of_a_parent_domain_is_aligned():
    stamp = f"Authentication-Results: {SERVER}; dkim=pass header.d=example.com"
    assert authenticated(_message(stamp), "ann@mail.example.com", [SERVER])


def test_the_envelope_recipient_the_server_stamped_decides_over_to():
    stamped = _message("Delivered-To: sales@other.example", "Delivered-To: sales@acme.example")
    assert addressed_to(stamped, "SALES@other.example")
    assert not addressed_to(stamped, "sales@acme.example")  # To: says so, the server did not
    assert addressed_to(_message(), "sales@acme.example")  # no stamp: To/Cc
    assert not addressed_to(_message(), "sales@other.example")


def test_an_internationalized_domain_is_the_same_account_in_its_ascii_form():
    """Stored as `sales@bücher.example`, the account's mail comes stamped to its IDNA form
    by any server without SMTPUTF8: such mail was passed over as another account's."""
    stamped = _message("Delivered-To: Sales@xn--bcher-kva.example")
    assert addressed_to(stamped, "sales@bücher.example")
    assert not addressed_to(stamped, "sales@bucher.example")


def test_the_trusted_servers_come_from_penguin_authserv_id(tmp_path):
    from engine.config import Settings

    env = {"PENGUIN_HOME": str(tmp_path), "PENGUIN_AUTHSERV_ID": " MX.acme.example, ,mx2.example"}
    assert Settings.from_env(env).authserv_ids == ("mx.acme.example", "mx2.example")
    assert Settings.from_env({"PENGUIN_HOME": str(tmp_path)}).authserv_ids == ()
