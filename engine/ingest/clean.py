"""Hygiene for one chunk of rows: trim, normalize, validate addresses, flag role addresses.

Everything here is a polars expression over whole columns. Address syntax is email-validator's
to judge, but calling it for a million ordinary addresses costs half a minute, so a
conservative pattern (`SIMPLE_ADDRESS`: ASCII dot-atoms at a public-looking domain) takes the
common case in bulk, in the form `canonical_email` gives (domain lowercased, local part
kept); a property test holds the two to that. Every address outside the pattern, which
includes every invalid one, goes through email-validator, once per distinct value.

Addresses are stored with their domain in ASCII (IDNA, `xn--...`): `a@bücher.example` and
`a@xn--bcher-kva.example` are one contact, and every stored domain can be sent to by a server
without SMTPUTF8. A local part outside ASCII stays as written; only SMTPUTF8 can carry it.
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass

import polars as pl
from email_validator import EmailNotValidError, validate_email

from engine.ingest.columns import TEXT_FIELDS
from engine.ingest.source import LINE, MAX_REJECT_TEXT, positions
from engine.text import shown

_ATOM = r"[A-Za-z0-9_%+'-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
#: Addresses email-validator accepts and normalizes by lowercasing the domain.
SIMPLE_ADDRESS = rf"^{_ATOM}(?:\.{_ATOM})*@(?:{_LABEL}\.)+[A-Za-z]{{2,63}}$"
#: Addresses the pattern lets through that still need email-validator: '--' in a label (IDNA
#: rules) and the special-use domains of RFC 6761, which it refuses.
_SLOW_PATH = r"(?i)--|\.(?:arpa|invalid|local|localhost|onion|test)$"

#: Local parts that reach a function or a team rather than a person.
ROLE_LOCAL_PARTS = frozenset(
    [
        "abuse",
        "accounting",
        "accounts",
        "admin",
        "administrator",
        "billing",
        "careers",
        "contact",
        "contactus",
        "customercare",
        "customerservice",
        "devnull",
        "dns",
        "do-not-reply",
        "donotreply",
        "enquiries",
        "enquiry",
        "feedback",
        "finance",
        "ftp",
        "hello",
        "help",
        "helpdesk",
        "hostmaster",
        "hr",
        "info",
        "inquiries",
        "inquiry",
        "jobs",
        "legal",
        "mail",
        "mailer-daemon",
        "marketing",
        "media",
        "news",
        "newsletter",
        "no-reply",
        "noc",
        "noreply",
        "office",
        "orders",
        "postmaster",
        "press",
        "privacy",
        "recruiting",
        "recruitment",
        "root",
        "sales",
        "security",
        "service",
        "spam",
        "support",
        "team",
        "usenet",
        "uucp",
        "webmaster",
        "www",
    ]
)
_TIMEZONES = sorted(zoneinfo.available_timezones())
#: A value longer than this is not contact data (a pasted document, a runaway quote).
MAX_VALUE_BYTES = 1 << 20
_INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff"
#: What `tidy` trims: Unicode whitespace (NBSP included) and the invisible characters above.
_TRIM = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000" + _INVISIBLE
)


_REJECT_SCHEMA = {"line_number": pl.Int64, "raw_row": pl.String, "reason": pl.String}


@dataclass(frozen=True)
class CleanChunk:
    contacts: pl.DataFrame  # the columns of STAGED_COLUMNS, one row per usable line
    rejects: pl.DataFrame  # line_number, raw_row, reason


STAGED_COLUMNS = (
    "line_number",
    "email",
    "is_role_address",
    *TEXT_FIELDS,
    "lead_score",
    "attributes",
    "raw_data",
)


def tidy(expr: pl.Expr) -> pl.Expr:
    """Trimmed (whitespace, NBSP and zero-width characters), NFC-normalized, empty as null.

    One expression without branches: a file of thousands of columns applies it to each, and
    polars' cost per expression then dominates (when/then made 5,000 columns take seconds)."""
    return expr.str.strip_chars(_TRIM).str.normalize("NFC").replace("", None)


def address_cell(expr: pl.Expr) -> pl.Expr:
    """The address in a cell: "Ada <ada@example.com>" and "mailto:ada@example.com" too."""
    text = tidy(expr)
    bracketed = text.str.extract(r"<\s*([^<>\s]+)\s*>\s*$", 1)
    return pl.coalesce(bracketed, text).str.replace(r"(?i)^mailto:", "")


def canonical_email(address: str) -> str:
    """`address` as it is stored: the local part as email-validator normalizes it (NFC) and
    the domain in its ASCII (IDNA) form, lowercased. Raises `EmailNotValidError`."""
    result = validate_email(address, check_deliverability=False)
    return f"{result.local_part}@{result.ascii_domain}"


def _validate(address: str) -> dict[str, str | None]:
    try:
        return {"email": canonical_email(address), "reason": None}
    except EmailNotValidError as exc:
        return {
            "email": None,
            "reason": f"email '{shown(address)}' is not valid: {shown(exc, 200)}",
        }


def validate_addresses(addresses: pl.Series) -> pl.DataFrame:
    """For each address: (email normalized or null, reason when invalid), in order."""
    frame = pl.DataFrame({"address": addresses})
    simple = pl.col("address").str.contains(SIMPLE_ADDRESS) & ~pl.col("address").str.contains(
        _SLOW_PATH
    )
    fits = (pl.col("address").str.len_bytes() <= 254) & (
        pl.col("address").str.find("@", literal=True) <= 64  # the local part's limit
    )
    frame = frame.with_columns((simple & fits).fill_null(False).alias("simple"))
    hard = frame.filter(~pl.col("simple") & pl.col("address").is_not_null()).select("address")
    checked = hard.unique().with_columns(
        pl.col("address")
        .map_elements(_validate, return_dtype=pl.Struct({"email": pl.String, "reason": pl.String}))
        .alias("checked")
    )
    frame = frame.join(checked, on="address", how="left", maintain_order="left")
    # In bulk, the form `canonical_email` gives: an ASCII domain, lowercased, is its IDNA form.
    at = pl.col("address").str.find("@", literal=True)
    easy = pl.concat_str(
        pl.col("address").str.slice(0, at), pl.col("address").str.slice(at).str.to_lowercase()
    )
    return frame.select(
        pl.when(pl.col("simple"))
        .then(easy)
        .otherwise(pl.col("checked").struct.field("email"))
        .alias("email"),
        pl.when(pl.col("address").is_null())
        .then(pl.lit("no email address in this line"))
        .when(~pl.col("simple"))
        .then(pl.col("checked").struct.field("reason"))
        .alias("reason"),
    )


def _clip(text: pl.Expr) -> pl.Expr:
    """At most `MAX_REJECT_TEXT` characters of a rejected line, saying how much is cut."""
    extra = text.str.len_chars().cast(pl.Int64) - MAX_REJECT_TEXT
    return (
        pl.when(extra > 0)
        .then(pl.format("{}… ({} more characters)", text.str.slice(0, MAX_REJECT_TEXT), extra))
        .otherwise(text)
    )


def _csv_line(columns: list[str], delimiter: str) -> pl.Expr:
    """The cells of a row written back as one CSV line, quoted where they need it."""
    special = f'["\\n\\r{delimiter}]'.replace("\t", "\\t").replace("|", "\\|")
    cells = [
        pl.when(pl.col(c).str.contains(special))
        .then(pl.lit('"') + pl.col(c).str.replace_all('"', '""', literal=True) + pl.lit('"'))
        .otherwise(pl.col(c))
        .fill_null("")
        for c in columns
    ]
    return pl.concat_str(cells, separator=delimiter)


def clean_chunk(
    frame: pl.DataFrame, names: tuple[str, ...], mapping: dict[str, str], delimiter: str
) -> CleanChunk:
    """Split a chunk of the file into contacts to stage and lines to reject.

    `frame` has the file's columns by position (`__in_0`, ...) plus `__line`; `names` are
    their headers and `mapping` is {header: field}.
    """
    position = dict(zip(names, positions(len(names)), strict=True))
    field_column = {target: position[column] for column, target in mapping.items()}
    unmapped = [name for name in names if name not in mapping]

    checked = validate_addresses(frame.select(address_cell(pl.col(field_column["email"])))[:, 0])
    longest = pl.max_horizontal([pl.col(position[n]).str.len_bytes() for n in names])
    too_long = pl.format("a value is {} bytes long, over the limit of 1 MiB", longest)
    frame = frame.with_columns(
        pl.when(longest <= MAX_VALUE_BYTES).then(checked["email"]).alias("__email"),
        pl.when(longest > MAX_VALUE_BYTES)
        .then(too_long)
        .otherwise(checked["reason"])
        .alias("__why"),
    )

    rejected = frame.filter(pl.col("__email").is_null())
    rejects = (
        rejected.select(
            pl.col(LINE).alias("line_number"),
            _clip(_csv_line([position[n] for n in names], delimiter)).alias("raw_row"),
            pl.col("__why").alias("reason"),
        )
        if rejected.height  # writing lines back costs an expression per column: only if needed
        else pl.DataFrame(schema=_REJECT_SCHEMA)
    )

    good = frame.filter(pl.col("__email").is_not_null())
    text = {
        f: tidy(pl.col(field_column[f])) if f in field_column else pl.lit(None, pl.String)
        for f in TEXT_FIELDS
    }
    full = text["full_name"]
    first_word = full.str.extract(r"^(\S+)\s", 1)
    local = pl.col("__email").str.extract(r"^([^@+]*)", 1).str.to_lowercase()
    score = (
        tidy(pl.col(field_column["lead_score"])).cast(pl.Float64, strict=False).round()
        if "lead_score" in field_column
        else pl.lit(None, pl.Float64)
    )
    contacts = good.select(
        pl.col(LINE).alias("line_number"),
        pl.col("__email").alias("email"),
        local.is_in(list(ROLE_LOCAL_PARTS)).alias("is_role_address"),
        pl.coalesce(text["first_name"], first_word, full).alias("first_name"),
        pl.coalesce(text["last_name"], full.str.extract(r"^\S+\s+(.+)$", 1)).alias("last_name"),
        pl.coalesce(
            full,
            tidy(
                pl.concat_str(
                    text["first_name"], text["last_name"], separator=" ", ignore_nulls=True
                )
            ),
        ).alias("full_name"),
        *[
            text[f].alias(f)
            for f in TEXT_FIELDS
            if f not in ("first_name", "last_name", "full_name", "timezone")
        ],
        pl.when(text["timezone"].is_in(_TIMEZONES)).then(text["timezone"]).alias("timezone"),
        pl.when(score.abs() < 2**31).then(score).cast(pl.Int32).alias("lead_score"),
        (
            pl.struct([tidy(pl.col(position[n])).alias(n) for n in unmapped]).struct.json_encode()
            if unmapped
            else pl.lit("{}")
        ).alias("attributes"),
        pl.struct([pl.col(position[n]).alias(n) for n in names])
        .struct.json_encode()
        .alias("raw_data"),
    ).select(STAGED_COLUMNS)
    return CleanChunk(contacts, rejects)
