"""Which column of an upload is which contact field.

Headers are matched after folding case and dropping everything but letters and digits, so
"E-mail Address", "email_address" and "EmailAddress" are one name. The aliases cover the
exports of Excel and Google Sheets templates, Google Contacts, Outlook, Mailchimp, HubSpot,
Salesforce, Apollo and LinkedIn. An explicit mapping (`--map COLUMN=FIELD`) wins over them;
a column mapped to nothing, or explicitly to `attribute`, is kept in the contact's
`attributes` under its header.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import polars as pl

from engine.ingest.errors import IngestError
from engine.text import shown, shown_list

HEADER_ALIASES: dict[str, tuple[str, ...]] = {
    "email": (
        "email",
        "emailaddress",
        "mail",
        "workemail",
        "businessemail",
        "primaryemail",
        "contactemail",
        "emailaddress1",  # Dynamics
        "email1value",  # Google Contacts: "E-mail 1 - Value"
        "email1",
    ),
    "first_name": ("firstname", "first", "givenname", "fname", "forename", "vorname", "prenom"),
    "last_name": ("lastname", "last", "surname", "familyname", "lname", "nachname"),
    "full_name": ("name", "fullname", "contactname", "displayname", "contact"),
    "company": (
        "company",
        "companyname",
        "companynameforemails",  # Apollo
        "organization",
        "organisation",
        "organizationname",
        "org",
        "account",
        "accountname",
        "employer",
        "firma",
    ),
    "job_title": ("jobtitle", "title", "position", "role", "designation", "occupation"),
    "phone": (
        "phone",
        "phonenumber",
        "mobile",
        "mobilephone",
        "mobilenumber",
        "telephone",
        "tel",
        "workphone",
        "directphone",
        "corporatephone",  # Apollo
        "phone1value",  # Google Contacts
    ),
    "website": (
        "website",
        "url",
        "web",
        "homepage",
        "websiteurl",
        "companywebsite",
        "companyurl",
        "domain",
        "companydomain",
    ),
    "city": ("city", "town", "locality"),
    "country": ("country", "countryregion", "countryname", "countrycode"),
    "timezone": ("timezone", "tz", "timezonename"),
    "lead_score": ("leadscore", "score", "hubspotscore", "leadrating"),
}
FIELDS = tuple(HEADER_ALIASES)
#: Text fields; `email` is validated on its own and `lead_score` is a number.
TEXT_FIELDS = tuple(f for f in FIELDS if f not in ("email", "lead_score"))
#: The mapping target that keeps a column in `attributes` even if its header names a field.
ATTRIBUTE = "attribute"

_LOOSE_ADDRESS = r"^\s*[^@\s]+@[^@\s]+\.[^@\s]+\s*$"


def header_key(header: str) -> str:
    return re.sub(r"[^0-9a-z]", "", header.casefold())


_ALIAS_TO_FIELD = {header_key(a): f for f, aliases in HEADER_ALIASES.items() for a in aliases}


def parse_mapping(pairs: list[str]) -> dict[str, str]:
    """`["Work Mail=email", ...]` (the CLI's `--map`) as {column: field}."""
    mapping: dict[str, str] = {}
    for pair in pairs:
        column, sep, target = pair.partition("=")
        if not sep or not column.strip() or not target.strip():
            raise IngestError(
                f"--map '{shown(pair)}': write it as COLUMN=FIELD, e.g. 'Work Mail=email'"
            )
        mapping[column.strip()] = target.strip()
    return mapping


def check_fields(explicit: Mapping[str, str]) -> None:
    for column, target in explicit.items():
        if target not in FIELDS and target != ATTRIBUTE:
            raise IngestError(
                f"mapping {shown(column)}={shown(target)}: '{shown(target)}' is not a contact "
                "field; "
                f"fields: {', '.join(FIELDS)} (or {ATTRIBUTE}, to keep the column as it is)"
            )
    targets = [t for t in explicit.values() if t != ATTRIBUTE]
    twice = sorted({t for t in targets if targets.count(t) > 1})
    if twice:
        raise IngestError(f"mapping: more than one column is mapped to {', '.join(twice)}")


def map_columns(
    columns: tuple[str, ...] | list[str],
    explicit: Mapping[str, str] | None = None,
    *,
    sample: pl.DataFrame | None = None,
    file_name: str = "the file",
    require_email: bool = True,
) -> dict[str, str]:
    """{column: field} for the columns of a file: explicit entries, then known header names,
    then (for email only) the column whose sample values look like addresses. Columns left
    out (or mapped to `attribute`) are kept as attributes."""
    explicit = dict(explicit or {})
    check_fields(explicit)
    for column in explicit:
        if column not in columns:
            raise IngestError(
                f"mapping names column '{shown(column)}', which {file_name} does not have; "
                f"columns found: {shown_list(columns)}"
            )
    mapping = dict(explicit)
    taken = set(mapping.values())
    for column in columns:
        target = _ALIAS_TO_FIELD.get(header_key(column))
        if column not in mapping and target and target not in taken:
            mapping[column] = target
            taken.add(target)
    if "email" not in taken and sample is not None:
        guessed = _address_column(sample, [c for c in columns if c not in mapping])
        if guessed:
            mapping[guessed] = "email"
    if "email" not in mapping.values() and require_email:
        raise IngestError(
            f"{file_name}: no column looks like an email address; columns found: "
            f"{shown_list(columns)}. Map the address column to email (--map COLUMN=email)"
        )
    return {
        column: mapping[column]
        for column in columns
        if column in mapping and mapping[column] != ATTRIBUTE
    }


def _address_column(sample: pl.DataFrame, candidates: list[str]) -> str | None:
    """The candidate column where most non-empty sample values look like an address."""
    best, best_share = None, 0.5
    for column in candidates:
        values = sample.get_column(column).drop_nulls()
        if values.len() == 0:
            continue
        share = values.str.contains(_LOOSE_ADDRESS).mean() or 0.0
        if share > best_share:
            best, best_share = column, share
    return best
