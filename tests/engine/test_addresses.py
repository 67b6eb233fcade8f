"""The bulk address check agrees with email-validator, which judges everything it does not
take itself: same accepted addresses, same normalization, same refusals."""

from __future__ import annotations

import polars as pl
from email_validator import validate_email
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.ingest.clean import SIMPLE_ADDRESS, validate_addresses

simple_addresses = st.from_regex(SIMPLE_ADDRESS, fullmatch=True)
ascii_text = st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=40
)


def check(addresses: list[str]) -> list[tuple[str | None, str | None]]:
    result = validate_addresses(pl.Series(addresses, dtype=pl.String))
    return list(zip(result["email"], result["reason"], strict=True))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(st.one_of(ascii_text, simple_addresses, st.just("a@b.test")), max_size=10))
def test_any_text_is_judged_as_email_validator_judges_it(values):
    from email_validator import EmailNotValidError

    for value, (email, reason) in zip(values, check(values), strict=True):
        try:
            expected = validate_email(value, check_deliverability=False).normalized
        except EmailNotValidError:
            assert email is None and reason.startswith(f"email {value!r} is not valid")
        else:
            assert (email, reason) == (expected, None)


def test_unicode_addresses_take_the_careful_path():
    [(email, reason)] = check(["Zoë.Müller@Exämple.com"])
    assert reason is None
    assert email == validate_email("Zoë.Müller@Exämple.com", check_deliverability=False).normalized
