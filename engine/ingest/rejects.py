"""The reject report of an upload batch, as a CSV a spreadsheet can open safely.

Rejected lines are user data and often what the user will open next, in Excel or Sheets. A
cell starting with `=`, `+`, `-`, `@`, a tab or a carriage return would run as a formula
there (CSV injection, OWASP), so every such cell is prefixed with a single quote, which
spreadsheets show as text.
"""

from __future__ import annotations

import uuid

import polars as pl
import sqlalchemy as sa
from sqlalchemy.engine import Connection

FORMULA_START = r"^[=+\-@\t\r]"
#: Rejects kept with their reasons per batch (an upload or an events import): the first ones
#: in the file. The rest are counted (a batch's counts stay exact) but not stored, so one file
#: of garbage cannot fill the database.
KEPT_REJECTS = 10_000

_REJECTS = sa.text(
    """
    select line_number, reason, raw_row from app.upload_rejects
    where batch_id = :batch_id order by line_number
    """
)


def neutralize(column: str) -> pl.Expr:
    """`column` with formula-looking cells prefixed by `'`."""
    cell = pl.col(column)
    return (
        pl.when(cell.str.contains(FORMULA_START)).then(pl.lit("'") + cell).otherwise(cell)
    ).alias(column)


def safe_csv(frame: pl.DataFrame) -> str:
    """`frame` as CSV text with every text cell neutralized."""
    text_columns = [name for name, dtype in frame.schema.items() if dtype == pl.String]
    return frame.with_columns([neutralize(c) for c in text_columns]).write_csv()


def rejects_frame(conn: Connection, batch_id: uuid.UUID) -> pl.DataFrame:
    rows = conn.execute(_REJECTS, {"batch_id": batch_id}).all()
    return pl.DataFrame(
        [tuple(row) for row in rows],
        schema={"line_number": pl.Int64, "reason": pl.String, "raw_row": pl.String},
        orient="row",
    )


def not_kept(rejected: int) -> int:
    """How many of a batch's `rejected` were counted but not kept (`KEPT_REJECTS`)."""
    return max(rejected - KEPT_REJECTS, 0)


def not_kept_note(rejected: int, noun: str = "rejects") -> str | None:
    """What a person is told about the rejects not kept, or None when all were."""
    more = not_kept(rejected)
    if not more:
        return None
    return (
        f"the first {KEPT_REJECTS:,} {noun} are kept with their reasons; {more:,} more were "
        "counted but not kept (fix the file's first rejects and load it again to see them)"
    )


def rejects_csv(conn: Connection, batch_id: uuid.UUID) -> str:
    """The batch's rejects (line, reason, raw line) as formula-safe CSV text."""
    return safe_csv(rejects_frame(conn, batch_id))
