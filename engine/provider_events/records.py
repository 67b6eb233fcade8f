"""The records of an exported events file, one at a time, with where each was.

Providers export webhook events as JSON lines (one event per line, or one webhook body — a JSON
array of events — per line), as one JSON array, or as CSV whose header names the fields (a
nested field as `a.b`, e.g. `event-data.message.headers.message-id`). Which one a file is comes
from its first character that is not white space: `[` an array, `{` JSON lines, anything else
CSV.

A record that cannot be read (not JSON, a line over `MAX_RECORD_BYTES`, a CSV row the reader
refuses) is yielded as unreadable with its reason, and reading goes on: one bad line never
stops a file.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from engine.text import shown, storable
from engine.userfiles import too_big

#: Longest record read; a longer line is a reject of its own.
MAX_RECORD_BYTES = 1 << 20
#: A whole-file JSON array is parsed at once (its values take ~10 times its size in memory);
#: past this size, export JSON lines instead.
MAX_ARRAY_BYTES = 64 << 20
#: JSON lines and CSV are read a record at a time, but every event is staged and written in
#: one transaction: a bigger export goes in parts.
MAX_STREAM_BYTES = 512 << 20
#: The most a file of each layout may hold, checked before it is read (`check_size`).
MAX_FILE_BYTES = {"array": MAX_ARRAY_BYTES, "lines": MAX_STREAM_BYTES, "csv": MAX_STREAM_BYTES}
_LAYOUT_NAMES = {"array": "a JSON array", "lines": "a JSON-lines file", "csv": "a CSV file"}
#: Characters of a rejected record kept in its reject.
MAX_RAW_CHARS = 10_000
CHUNK_BYTES = 1 << 20


class FileError(ValueError):
    """The file as a whole cannot be read; the message says why."""


@dataclass(frozen=True)
class Record:
    #: The record's place in the file (1, 2, ...) and the line it starts on.
    number: int
    line: int
    raw: str
    value: object = None
    #: Why it cannot be read, or None.
    problem: str | None = None


def layout_of(handle: BinaryIO) -> str:
    """`array`, `lines` or `csv`, from the first non-blank character of the open file (read
    from its start; it is left anywhere); a file whose first line is a whole JSON array by
    itself is JSON lines of webhook bodies."""
    handle.seek(0)
    head = handle.read(4096)
    while head and not head.lstrip(b" \t\r\n" + codecs.BOM_UTF8):
        head = handle.read(4096)
    start = head.lstrip(codecs.BOM_UTF8).lstrip(b" \t\r\n")[:1]
    if not start:
        raise FileError("the file is empty")
    if start != b"[":
        return "lines" if start == b"{" else "csv"
    handle.seek(0)
    first = next((line for line in _bounded_lines(handle) if line and line.strip()), None)
    try:
        _json((first or b"").decode("utf-8", errors="replace").lstrip("\ufeff"))
    except ValueError:
        return "array"  # an array over several lines: the whole file is one
    return "lines"


def oversize(kind: str, size: int, label: str) -> str | None:
    """Why a file of layout `kind` and `size` bytes is over its `MAX_FILE_BYTES` (naming its
    size and the cap), or None."""
    cap = MAX_FILE_BYTES[kind]
    if size <= cap:
        return None
    hint = (
        "export JSON lines (one event per line) instead"
        if kind == "array"
        else "split it into smaller files and import each"
    )
    return too_big(label, size, cap, _LAYOUT_NAMES[kind] + " of events", hint)


def read(handle: BinaryIO, progress=None) -> Iterator[Record]:
    """Every record of the open file `handle` (module docstring), read from its start;
    `progress(bytes_read)` as it goes.

    It takes the file its caller opened and checked (a regular file within its cap), never a
    path to open again: a path may name another file by then (a FIFO that blocks, a bigger
    file)."""
    kind = layout_of(handle)
    handle.seek(0)
    if kind == "array":
        yield from _array(handle)
    elif kind == "lines":
        yield from _lines(handle, progress)
    else:
        yield from _csv(handle, progress)


def _raw(text: str) -> str:
    """A record's text as its reject keeps it: storable, and at most `MAX_RAW_CHARS`."""
    return storable(text if len(text) <= MAX_RAW_CHARS else text[:MAX_RAW_CHARS] + "…")


def _json(text: str) -> object:
    """JSON text as Python values; ValueError for what is not JSON, NaN and Infinity included,
    or is nested too deeply or holds a number too long to read."""
    from engine.provider_events.formats import refuse_constant

    try:
        return json.loads(text, parse_constant=refuse_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _lines(handle: BinaryIO, progress) -> Iterator[Record]:
    number = 0
    for line_number, line in enumerate(_bounded_lines(handle), start=1):
        if progress is not None and line_number % 10_000 == 0:
            progress(handle.tell())
        if line is None:
            number += 1
            yield Record(number, line_number, "", problem=_too_long())
            continue
        text = line.decode("utf-8", errors="replace").lstrip("\ufeff").strip()
        if not text:
            continue
        try:
            value = _json(text)
        except ValueError as exc:
            number += 1
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            yield Record(number, line_number, _raw(text), problem=f"not JSON ({reason})")
            continue
        for item in value if isinstance(value, list) else [value]:  # a webhook body
            number += 1
            raw = text if not isinstance(value, list) else json.dumps(item, default=str)
            yield Record(number, line_number, _raw(raw), item)


def _too_long() -> str:
    return f"the line is over {MAX_RECORD_BYTES // 1024:,} KiB: no event is that long"


def _bounded_lines(handle: BinaryIO) -> Iterator[bytes | None]:
    """The file's lines; None for one over `MAX_RECORD_BYTES` (read past, never held)."""
    while True:
        line = handle.readline(MAX_RECORD_BYTES + 1)
        if not line:
            return
        if len(line) > MAX_RECORD_BYTES and not line.endswith(b"\n"):
            while (rest := handle.readline(CHUNK_BYTES)) and not rest.endswith(b"\n"):
                pass
            yield None
            continue
        yield line


def _array(handle: BinaryIO) -> Iterator[Record]:
    data = handle.read(MAX_ARRAY_BYTES + 1)
    size = len(data)
    if size > MAX_ARRAY_BYTES:
        raise FileError(
            f"a JSON array of {size / 2**20:,.0f} MiB is more than can be read at once "
            f"({MAX_ARRAY_BYTES // 2**20} MiB); export JSON lines (one event per line) instead"
        )
    text = data.decode("utf-8", errors="replace").lstrip("\ufeff")
    del data
    try:
        value = json.loads(text)  # NaN and Infinity pass here, and are no value when stored
    except json.JSONDecodeError as exc:
        raise FileError(
            f"the file starts as a JSON array but is not valid JSON ({exc.msg} at line "
            f"{exc.lineno}, column {exc.colno})"
        ) from None
    except (ValueError, RecursionError) as exc:
        raise FileError(f"the file is a JSON array that cannot be read ({exc})") from None
    if not isinstance(value, list):
        raise FileError("the file starts as a JSON array but is not one")
    for number, item in enumerate(value, start=1):
        yield Record(number, number, _raw(json.dumps(item, default=str)), item)


def _csv(binary: BinaryIO, progress) -> Iterator[Record]:
    csv.field_size_limit(MAX_RECORD_BYTES)
    handle = io.TextIOWrapper(binary, encoding="utf-8-sig", errors="replace", newline="")
    try:
        reader = csv.reader(handle)
        try:
            header = next(reader)
        except StopIteration:
            raise FileError("the file is empty") from None
        except csv.Error as exc:
            raise FileError(f"its header line cannot be read as CSV ({exc})") from None
        header = [name.strip() for name in header]
        if not any(header):
            raise FileError("its first line, the header, names no fields")
        number = 0
        while True:
            start = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                number += 1
                yield Record(number, start, "", problem=f"not a CSV record ({shown(exc)})")
                continue
            if progress is not None and reader.line_num % 10_000 == 0:
                progress(handle.buffer.tell())
            if not any(cell.strip() for cell in row):
                continue
            number += 1
            raw = _raw(",".join(row))
            if len(row) != len(header):
                yield Record(
                    number,
                    start,
                    raw,
                    problem=f"{len(row)} fields where the header has {len(header)}",
                )
                continue
            yield Record(number, start, raw, _nested(header, row))
    finally:
        handle.detach()  # the caller closes the file it opened


def _nested(header: list[str], row: list[str]) -> dict:
    """A CSV row as the record it flattens: `a.b` columns become `{"a": {"b": ...}}`; an empty
    cell is no value."""
    record: dict = {}
    for name, cell in zip(header, row, strict=True):
        if not name or cell == "":
            continue
        *parents, leaf = name.split(".")
        node = record
        for key in parents:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):  # `a` and `a.b` both given: keep the first
                break
            node = child
        else:
            node.setdefault(leaf, cell)
    return record
