"""CSV ingestion: one file becomes one upload batch, its contacts, and a named list.

DuckDB reads the file (its sniffer finds the delimiter and quoting), polars shapes the rows,
and PostgreSQL merges them set-based through `COPY` into a temporary table and one upsert.
The whole batch lands in one transaction: a file lands whole or not at all.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb
import polars as pl
import sqlalchemy as sa
from email_validator import EmailNotValidError, validate_email
from sqlalchemy.engine import Connection, Engine

from engine.db import tenant_transaction

#: Header spellings (compared lowercase, without spaces, '-' and '_') for each contact field.
HEADER_ALIASES: dict[str, tuple[str, ...]] = {
    "email": ("email", "emailaddress", "mail", "e-mail", "workemail"),
    "first_name": ("firstname", "givenname", "first"),
    "last_name": ("lastname", "familyname", "surname", "last"),
    "full_name": ("name", "fullname", "contactname"),
    "company": ("company", "companyname", "organization", "organisation", "account"),
    "job_title": ("jobtitle", "title", "position", "role"),
    "phone": ("phone", "phonenumber", "mobile", "telephone"),
    "website": ("website", "url", "companywebsite", "domain"),
    "city": ("city", "town"),
    "country": ("country",),
    "timezone": ("timezone", "tz", "timezonename"),
}
FIELDS = tuple(HEADER_ALIASES)


class IngestError(ValueError):
    """The file as a whole cannot be used; the message says why and what was found."""


@dataclass(frozen=True)
class IngestResult:
    batch_id: uuid.UUID
    list_id: uuid.UUID
    total_rows: int
    inserted: int
    updated: int
    duplicates: int
    rejected: int


def _key(header: str) -> str:
    return "".join(ch for ch in header.lower() if ch not in " -_")


def map_columns(headers: list[str], explicit: dict[str, str] | None = None) -> dict[str, str]:
    """Map CSV column → contact field: explicit entries first, then the known header names."""
    mapping: dict[str, str] = {}
    explicit = explicit or {}
    for column, field in explicit.items():
        if column not in headers:
            raise IngestError(f"mapping names column {column!r}, which the file does not have")
        if field not in FIELDS:
            raise IngestError(
                f"mapping {column}={field}: unknown field; fields: {', '.join(FIELDS)}"
            )
        mapping[column] = field
    taken = set(mapping.values())
    aliases = {_key(alias): field for field, names in HEADER_ALIASES.items() for alias in names}
    for header in headers:
        field = aliases.get(_key(header))
        if header not in mapping and field and field not in taken:
            mapping[header] = field
            taken.add(field)
    return mapping


def _validate_address(address: str | None) -> tuple[str | None, str | None]:
    if address is None or not address.strip():
        return None, "email is empty"
    try:
        return validate_email(address.strip(), check_deliverability=False).normalized, None
    except EmailNotValidError as exc:
        return None, f"email {address.strip()!r} is not valid: {exc}"


def read_rows(path: Path) -> pl.DataFrame:
    try:
        relation = duckdb.read_csv(str(path), header=True, all_varchar=True)
        return relation.pl()
    except duckdb.Error as exc:
        raise IngestError(f"{path.name}: cannot be read as CSV: {exc}") from None


def prepare(frame: pl.DataFrame, mapping: dict[str, str]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split rows into (contacts to merge, rejects) with line numbers of the file.

    The file's columns are renamed to positions first (`__in_0`, ...), so no header a user
    writes (`line_number`, `reason`, ...) can collide with the columns computed here.
    """
    headers = frame.columns
    col = {header: f"__in_{i}" for i, header in enumerate(headers)}
    frame = frame.rename(col)
    email = col[next(column for column, field in mapping.items() if field == "email")]
    frame = frame.with_row_index("__line", offset=2).with_columns(
        pl.struct([pl.col(col[h]).alias(h) for h in headers]).struct.json_encode().alias("__raw"),
        pl.concat_str([pl.col(col[h]).fill_null("") for h in headers], separator=",").alias(
            "__raw_row"
        ),
    )
    checked = (
        frame.select(pl.col(email).unique())
        .with_columns(
            pl.col(email)
            .map_elements(
                lambda a: dict(zip(("__email", "__reason"), _validate_address(a), strict=True)),
                return_dtype=pl.Struct({"__email": pl.String, "__reason": pl.String}),
            )
            .alias("__check")
        )
        .unnest("__check")
    )
    frame = frame.join(checked, on=email, how="left", nulls_equal=True).with_columns(
        # map_elements never sees nulls: an empty cell has no reason yet.
        pl.col("__reason").fill_null(
            pl.when(pl.col("__email").is_null()).then(pl.lit("email is empty"))
        )
    )
    rejects = frame.filter(pl.col("__email").is_null()).select(
        pl.col("__line").alias("line_number"),
        pl.col("__raw_row").alias("raw_row"),
        pl.col("__reason").alias("reason"),
    )
    good = frame.filter(pl.col("__email").is_not_null())
    field_column = {field: col[column] for column, field in mapping.items()}
    extra = [h for h in headers if h not in mapping]
    contacts = good.select(
        pl.col("__line").alias("line_number"),
        pl.col("__email").alias("email"),
        *[
            (
                pl.col(field_column[field]).str.strip_chars()
                if field in field_column
                else pl.lit(None, dtype=pl.String)
            ).alias(field)
            for field in FIELDS[1:]
        ],
        (
            pl.struct([pl.col(col[h]).alias(h) for h in extra]).struct.json_encode()
            if extra
            else pl.lit("{}")
        ).alias("attributes"),
        pl.col("__raw").alias("raw_data"),
    )
    return contacts, rejects


_INSERT_BATCH = sa.text(
    """
    insert into app.upload_batches
        (tenant_id, list_id, file_name, content_sha256, column_mapping, status, started_at,
         created_at)
    values (app.current_tenant_id(), :list_id, :file_name, :sha, :mapping, 'processing', :now,
            :now)
    returning id
    """
)
_UPSERT_LIST = sa.text(
    """
    insert into app.contact_lists (tenant_id, name, created_at, updated_at)
    values (app.current_tenant_id(), :name, :now, :now)
    on conflict (tenant_id, name) do update set updated_at = excluded.updated_at
    returning id
    """
)
_STAGE = sa.text(
    """
    create temporary table staged_contacts (
        line_number integer, email text, first_name text, last_name text, full_name text,
        company text, job_title text, phone text, website text, city text, country text,
        timezone text, attributes jsonb, raw_data jsonb
    ) on commit drop
    """
)
# Later rows of the file win over earlier ones for the same address; fields the file leaves
# empty keep what the contact already had.
_MERGE = sa.text(
    """
    with latest as (
        select distinct on (lower(email)) *
        from staged_contacts
        order by lower(email), line_number desc
    ), merged as (
        insert into app.contacts as c
            (tenant_id, email, first_name, last_name, full_name, company, job_title, phone,
             website, city, country, timezone, attributes, raw_data, upload_batch_id,
             created_at, updated_at)
        select app.current_tenant_id(), email, first_name, last_name, full_name, company,
               job_title, phone, website, city, country, timezone, attributes, raw_data,
               :batch_id, :now, :now
        from latest
        on conflict (tenant_id, lower(email)) do update set
            first_name = coalesce(excluded.first_name, c.first_name),
            last_name = coalesce(excluded.last_name, c.last_name),
            full_name = coalesce(excluded.full_name, c.full_name),
            company = coalesce(excluded.company, c.company),
            job_title = coalesce(excluded.job_title, c.job_title),
            phone = coalesce(excluded.phone, c.phone),
            website = coalesce(excluded.website, c.website),
            city = coalesce(excluded.city, c.city),
            country = coalesce(excluded.country, c.country),
            timezone = coalesce(excluded.timezone, c.timezone),
            attributes = c.attributes || excluded.attributes,
            raw_data = excluded.raw_data,
            updated_at = excluded.updated_at
        returning c.id, (xmax = 0) as inserted
    ), members as (
        insert into app.contact_list_members (tenant_id, list_id, contact_id, added_at)
        select app.current_tenant_id(), :list_id, id, :now from merged
        on conflict do nothing
    )
    select count(*) filter (where inserted) as inserted,
           count(*) filter (where not inserted) as updated
    from merged
    """
)
_INSERT_REJECT = sa.text(
    """
    insert into app.upload_rejects (tenant_id, batch_id, line_number, raw_row, reason)
    values (app.current_tenant_id(), :batch_id, :line_number, :raw_row, :reason)
    """
)
_FINISH = sa.text(
    """
    update app.upload_batches set status = 'completed', finished_at = :now,
        total_rows = :total, inserted_count = :inserted, updated_count = :updated,
        duplicate_count = :duplicates, rejected_count = :rejected
    where id = :batch_id
    """
)
_FAILED = sa.text(
    """
    insert into app.upload_batches
        (tenant_id, file_name, content_sha256, status, error, created_at, finished_at)
    values (app.current_tenant_id(), :file_name, :sha, 'failed', :error, :now, :now)
    """
)


def ensure_list(conn: Connection, name: str, now: datetime) -> uuid.UUID:
    """The id of the tenant's list `name`, created if it does not exist yet."""
    if not name.strip():
        raise IngestError("a list name must not be empty")
    return conn.execute(_UPSERT_LIST, {"name": name.strip(), "now": now}).scalar_one()


def _copy(conn: Connection, frame: pl.DataFrame) -> None:
    raw = conn.connection.dbapi_connection
    columns = ", ".join(frame.columns)
    with (
        raw.cursor() as cur,
        cur.copy(f"copy staged_contacts ({columns}) from stdin (format csv)") as copy,
    ):
        copy.write(frame.write_csv(include_header=False))


def ingest_csv(
    app: Engine,
    tenant_id: uuid.UUID,
    path: Path,
    list_name: str,
    now: datetime,
    *,
    mapping: dict[str, str] | None = None,
) -> IngestResult:
    """Load `path` into the tenant's contacts and list `list_name`, in one transaction."""
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    try:
        frame = read_rows(path)
        columns = map_columns(frame.columns, mapping)
        if "email" not in columns.values():
            raise IngestError(
                f"{path.name}: no column looks like an email address; "
                f"columns found: {', '.join(frame.columns) or '(none)'}"
            )
        contacts, rejects = prepare(frame, columns)
    except IngestError as exc:
        with tenant_transaction(app, tenant_id) as conn:
            conn.execute(
                _FAILED, {"file_name": path.name, "sha": sha, "error": str(exc), "now": now}
            )
        raise

    with tenant_transaction(app, tenant_id) as conn:
        list_id = ensure_list(conn, list_name, now)
        batch_id = conn.execute(
            _INSERT_BATCH,
            {
                "list_id": list_id,
                "file_name": path.name,
                "sha": sha,
                "mapping": json.dumps(columns),
                "now": now,
            },
        ).scalar_one()
        conn.execute(_STAGE)
        _copy(conn, contacts)
        merged = conn.execute(_MERGE, {"batch_id": batch_id, "list_id": list_id, "now": now}).one()
        if rejects.height:
            conn.execute(
                _INSERT_REJECT,
                [{"batch_id": batch_id, **row} for row in rejects.iter_rows(named=True)],
            )
        duplicates = contacts.height - (merged.inserted + merged.updated)
        result = IngestResult(
            batch_id=batch_id,
            list_id=list_id,
            total_rows=frame.height,
            inserted=merged.inserted,
            updated=merged.updated,
            duplicates=duplicates,
            rejected=rejects.height,
        )
        conn.execute(
            _FINISH,
            {
                "batch_id": batch_id,
                "now": now,
                "total": result.total_rows,
                "inserted": result.inserted,
                "updated": result.updated,
                "duplicates": result.duplicates,
                "rejected": result.rejected,
            },
        )
    return result
