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


def rejects_csv(conn: Connection, batch_id: uuid.UUID) -> str:
    """The batch's rejects (line, reason, raw line) as formula-safe CSV text."""
    return safe_csv(rejects_frame(conn, batch_id))
