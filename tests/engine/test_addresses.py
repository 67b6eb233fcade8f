"""The bulk address check agrees with email-validator, which judges everything it does not
take itself: same accepted addresses, same canonical form (`canonical_email`), same refusals.
Every accepted address has an ASCII domain, so any SMTP server can be asked to take it."""

from __future__ import annotations

import polars as pl
from email_validator import EmailNotValidError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.ingest.clean import SIMPLE_ADDRESS, canonical_email, validate_addresses
from engine.text import shown

simple_addresses = st.from_regex(SIMPLE_ADDRESS, fullmatch=True)
ascii_text = st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=40
)
#: Addresses at internationalized domains, in Unicode and in their xn-- form.
idn_addresses = st.sampled_from(
    [
        "a@bücher.example",
        "a@xn--bcher-kva.example",
        "A@B\u00fcCHER.example",
        "Zoë@exämple.com",
        "info@xn--mller-kva.de",
        "x@日本.jp",
    ]
)


def check(addresses: list[str]) -> list[tuple[str | None, str | None]]:
    result = validate_addresses(pl.Series(addresses, dtype=pl.String))
    return list(zip(result["email"], result["reason"], strict=True))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    st.lists(
        st.one_of(ascii_text, simple_addresses, idn_addresses, st.just("a@b.test")), max_size=10
    )
)
def test_any_text_is_judged_as_email_validator_judges_it(values):
    for value, (email, reason) in zip(values, check(values), strict=True):
        try:
            expected = canonical_email(value)
        except EmailNotValidError:
            assert email is None and reason.startswith(f"email '{shown(value)}' is not valid")
        else:
            assert (email, reason) == (expected, None)
            assert email.rpartition("@")[2].isascii()  # sendable without SMTPUTF8


def test_a_unicode_domain_and_its_xn_form_are_one_address():
    assert (
        check(["a@bücher.example", "a@xn--bcher-kva.example", "a@B\u00fcCHER.example"])
        == [("a@xn--bcher-kva.example", None)] * 3
    )


def test_a_unicode_local_part_stays_as_written():
    [(email, reason)] = check(["Zoë.Müller@Exämple.com"])
    assert (email, reason) == ("Zoë.Müller@xn--exmple-cua.com", None)


def test_control_characters_in_an_address_are_escaped_in_its_reason():
    [(email, reason)] = check(["evil\x1b[31m@example.com\x07"])
    assert email is None
    assert reason.startswith("email 'evil\\x1b[31m@example.com\\x07' is not valid")
    assert all(c.isprintable() for c in reason)
