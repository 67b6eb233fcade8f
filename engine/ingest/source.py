"""Reading an uploaded file: its encoding, its CSV dialect, and its rows in chunks.

Files come from Excel (semicolons, Windows-1252, a byte-order mark), Google Sheets, CRMs and
hand edits. Reading happens in three steps, none of which loops over rows in Python:

1. **Encoding.** Byte-order marks decide UTF-8/16/32; without one, a file that decodes as
   UTF-8 is UTF-8, anything else is Windows-1252 (or Latin-1, for the five bytes
   Windows-1252 leaves undefined). A file that is mostly control characters is refused as
   not text. Files that are not UTF-8, carry NUL bytes, mix line endings (CRLF, LF, CR
   alone: a file edited in two programs) or have a line over `MAX_LINE_BYTES` are rewritten
   chunk by chunk into a UTF-8 copy with LF line ends, so DuckDB always reads clean UTF-8
   with one line ending and lines it can hold. Clean files, the common case, are read as
   they are.
2. **Dialect.** DuckDB's sniffer finds delimiter, header and leading rows to skip, with the
   quote fixed to `"` (RFC 4180, which every exporter above writes). Excel's `sep=;` first
   line names the delimiter and is skipped. A sniffer that gives up on a messy file, or
   takes a title line holding a delimiter for the header, is backed by a count of candidate
   delimiters over the first lines.
3. **Rows.** DuckDB reads the file with that dialect and `store_rejects`, so malformed
   records (too many or too few fields, a quote that never closes, a line over the size
   limit) are set aside with their line numbers instead of failing the file; a line whose
   quote never closes is cut out and the file read again, so it costs only itself. A first
   pass counts records and collects those rejects; the second streams Arrow batches, each
   stamped with its line numbers. DuckDB's own messages never reach the user: each reject
   says in the file's terms what is wrong with its line.

DuckDB never sees a path a user chose: it reads a path as a glob (`leads[12].csv` would load
`leads1.csv` and `leads2.csv`) and guesses compression from the extension, so it reads
`source.csv` in the ingest's own work folder, a link to the upload or the clean copy.

Line numbers count records the way a spreadsheet numbers rows: the header is line 1 and a
quoted value spanning several physical lines is still one line.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import os
import re
import shutil
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

import duckdb
import numpy as np
import polars as pl

from engine.ingest.errors import IngestError
from engine.text import shown
from engine.userfiles import UserFileError, open_input

CHUNK_BYTES = 1 << 20
#: An upload may be at most this big (checked before it is read). DuckDB streams it in bounded
#: memory, but its rows are staged and merged in one transaction: a bigger list goes in parts.
MAX_UPLOAD_BYTES = 1 << 30
#: Records DuckDB hands over at a time, at most; bounds memory whatever the file's length.
BATCH_ROWS = 100_000
#: ... and cells: a wide file comes in batches of fewer rows (at least `MIN_BATCH_ROWS`).
BATCH_CELLS = 2_000_000
MIN_BATCH_ROWS = 1_000
#: DuckDB's line buffer: at least this, and more for a file with a longer line, up to
#: `MAX_LINE_BYTES`. (DuckDB drops a line over its limit without recording a reject, so the
#: limit is sized to the file's longest line and long values are refused in `clean`.) Keep the
#: minimum small: DuckDB reads in buffers of 16 lines' worth, one per thread, so 8 MiB here
#: cost 128 MiB buffers and ~400 MB of resident memory for any file.
MIN_LINE_BYTES = 1 << 20
#: A physical line longer than this is no contact data (a pasted document, a runaway quote, a
#: binary blob): it is cut out of what DuckDB reads and becomes a reject of its own, so its
#: size never decides the line buffer and the rest of the file loads in bounded memory.
MAX_LINE_BYTES = 8 << 20
#: Columns a file may have. DuckDB's CSV reader reserves ~100-150 KiB per column and thread
#: (a 5,000-column file needs ~1 GB of its memory limit, though ~500 MB resident); Excel's
#: sheets end at 16,384 columns, and no contact list comes near either.
MAX_COLUMNS = 10_000
#: Raw text kept per rejected line; the rest is summarized.
MAX_REJECT_TEXT = 10_000
#: A file whose first 64 KiB hold more than this share of control characters is not text.
MAX_CONTROL_SHARE = 0.1
DELIMITERS = (",", ";", "\t", "|")
LINE = "__line"

_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_NOT_CSV = (
    (b"PK\x03\x04", "an Excel workbook or another zip archive"),
    (b"\xd0\xcf\x11\xe0", "a legacy Excel (.xls) workbook"),
    (b"\x1f\x8b", "a gzip-compressed file"),
    (b"%PDF", "a PDF document"),
)
_EMAIL_LIKE = re.compile(r"[^@\s,;|\t\"']+@[^@\s,;|\t\"']+\.[A-Za-z]{2,}")


@dataclass(frozen=True)
class FileFormat:
    """How a file was read; stored on its upload batch so a user can see what was assumed."""

    encoding: str
    delimiter: str
    has_header: bool
    skipped_lines: int
    columns: tuple[str, ...]
    newline: str = "\n"
    transcoded: bool = False
    notes: tuple[str, ...] = field(default=())

    def as_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Reject:
    line: int
    raw_row: str
    reason: str


# --- encoding ---------------------------------------------------------------------------


def _refuse_non_csv(head: bytes, name: str) -> None:
    for magic, what in _NOT_CSV:
        if head.startswith(magic):
            raise IngestError(
                f"{name}: this is {what}, not a CSV file; export or save it as CSV "
                "(in Excel: File → Save As → CSV UTF-8) and upload that"
            )


def _utf16_without_bom(head: bytes) -> str | None:
    """UTF-16 without a byte-order mark shows as NUL in every other byte of ASCII text."""
    even, odd = head[0::2], head[1::2]
    if len(head) >= 4 and odd.count(0) > 0.4 * len(odd) and even.count(0) < 0.1 * len(even):
        return "utf-16-le"
    if len(head) >= 4 and even.count(0) > 0.4 * len(even) and odd.count(0) < 0.1 * len(odd):
        return "utf-16-be"
    return None


def _line_ends(chunk: bytes) -> np.ndarray:
    """Offsets of the line terminators in `chunk`: LF and CR (old Mac files end lines in CR
    alone; in CRLF files the CR ends the line and the LF an empty one)."""
    data = np.frombuffer(chunk, dtype=np.uint8)
    return np.flatnonzero((data == 10) | (data == 13))


class _LineMeter:
    """The longest line of a byte stream fed in chunks (vectorized)."""

    def __init__(self) -> None:
        self.longest = 0
        self._open = 0  # bytes of the line that runs past the last chunk

    def feed(self, chunk: bytes) -> None:
        ends = _line_ends(chunk)
        if len(ends) == 0:
            self._open += len(chunk)
            return
        inner = int(np.diff(ends).max()) - 1 if len(ends) > 1 else 0
        self.longest = max(self.longest, self._open + int(ends[0]), inner)
        self._open = len(chunk) - int(ends[-1]) - 1

    def result(self) -> int:
        return max(self.longest, self._open)


class _NewlineCounter:
    """How many lines of a byte stream end in CRLF, in CR alone and in LF alone.

    A file edited in two programs mixes them (a CRLF export with lines added in an editor that
    writes LF), and DuckDB reads one convention per file: such a file is rewritten with LF
    throughout. `bytes.count` runs in C, so counting costs a fraction of the survey's read."""

    def __init__(self) -> None:
        self.crlf = self.cr = self.lf = 0
        self._cr_at_end = False  # the last chunk ended in CR: a CRLF may straddle chunks

    def feed(self, chunk: bytes) -> None:
        straddles = self._cr_at_end and chunk.startswith(b"\n")
        cr = chunk.count(b"\r")
        self.crlf += (chunk.count(b"\r\n") if cr else 0) + straddles
        self.cr += cr
        self.lf += chunk.count(b"\n")
        self._cr_at_end = chunk.endswith(b"\r")

    def conventions(self) -> dict[str, int]:
        """{line ending: lines ending so}, for the conventions the stream uses."""
        found = {"\r\n": self.crlf, "\r": self.cr - self.crlf, "\n": self.lf - self.crlf}
        return {ending: count for ending, count in found.items() if count}


@dataclass(frozen=True)
class Survey:
    """What one pass over a file's bytes tells: enough to decide how to read it."""

    sha256: str
    size: int
    head: bytes
    utf8: bool  # the whole file decodes as UTF-8
    has_nul: bool
    longest_line: int  # in bytes, as stored
    #: {line ending: how many lines end so}: one key for a file written by one program.
    newlines: dict[str, int] = field(default_factory=dict)
    #: (device, inode) of the file read: every later read checks it reads the same file.
    identity: tuple[int, int] = (0, 0)

    @property
    def mixed_newlines(self) -> bool:
        return len(self.newlines) > 1


def survey(path: Path, label: str | None = None, *, follow_links: bool = True) -> Survey:
    """Hash, size, UTF-8 validity, NUL bytes and longest line of `path`, in one read;
    `UserFileError` naming `label` for what is not a regular file or is over
    `MAX_UPLOAD_BYTES` (or is a link, unless `follow_links`: an inbox's entry)."""
    digest, size, head = hashlib.sha256(), 0, b""
    decoder: codecs.IncrementalDecoder | None = codecs.getincrementaldecoder("utf-8")()
    meter, newlines, has_nul = _LineMeter(), _NewlineCounter(), False
    hint = "split it into smaller files and upload each"
    with open_input(
        path,
        label=label,
        max_bytes=MAX_UPLOAD_BYTES,
        what="an upload",
        hint=hint,
        follow_links=follow_links,
    ) as handle:
        info = os.fstat(handle.fileno())
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
            head = head or chunk[: 64 * 1024]
            has_nul = has_nul or b"\x00" in chunk
            meter.feed(chunk)
            newlines.feed(chunk)
            if decoder is not None:
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError:
                    decoder = None
    if decoder is not None:
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            decoder = None
    return Survey(
        digest.hexdigest(),
        size,
        head,
        decoder is not None,
        has_nul,
        meter.result(),
        newlines.conventions(),
        (info.st_dev, info.st_ino),
    )


def _check_same(info: os.stat_result, surveyed: Survey, name: str) -> None:
    """Refuse to read on when the path now names another file than the one surveyed (one put
    in its place since: a link to a file elsewhere, a FIFO, other contents)."""
    if (info.st_dev, info.st_ino) != surveyed.identity or info.st_size != surveyed.size:
        raise IngestError(
            f"{name}: the file was replaced or changed while it was read; upload it again "
            "once it is complete"
        )


@dataclass(frozen=True)
class Overlong:
    """A physical line over `MAX_LINE_BYTES`, cut out of what DuckDB reads."""

    size: int  # bytes, as UTF-8
    head: str  # its first `MAX_REJECT_TEXT` characters, for the reject report

    def reason(self, line: int) -> str:
        return (
            f"line {line} is {_size(self.size)} long; lines over "
            f"{_size(MAX_LINE_BYTES)} are refused"
        )

    def raw_row(self) -> str:
        return f"{self.head}… ({self.size - len(self.head.encode()):,} more bytes)"


#: What stands in for an over-long line: bytes that are not UTF-8, so DuckDB rejects the
#: record holding them (`INVALID ENCODING`) under its own line number whatever the dialect
#: and the number of columns, and the rest of the file keeps its numbering. (The file DuckDB
#: reads is otherwise valid UTF-8, so no other record is rejected that way.)
_MARKER = re.compile(r"penguin:(overlong|unclosed):(\d+)")


def _marker(kind: str, index: int) -> bytes:
    return b"\xff" + f"penguin:{kind}:{index}".encode() + b"\xff"


def _size(size: int) -> str:
    return f"{size / (1 << 20):,.0f} MiB" if size >= 1 << 20 else f"{size:,} bytes"


class _LineCutter:
    """Passes a byte stream through, replacing each line over `MAX_LINE_BYTES` by a marker.

    Only a line running past a chunk can be that long (a chunk is smaller than the limit),
    so lines within a chunk pass in one slice; a long line is held up to the limit, then
    only its head is kept while the rest is counted and dropped.
    """

    def __init__(self) -> None:
        assert CHUNK_BYTES < MAX_LINE_BYTES
        self.cut: list[Overlong] = []
        self._open = bytearray()  # the line running past the last chunk, while short
        self._dropped: int | None = None  # its length, once it is too long to keep

    def _extend(self, part: bytes) -> None:
        if self._dropped is not None:
            self._dropped += len(part)
            return
        self._open += part
        if len(self._open) > MAX_LINE_BYTES:
            self._dropped = len(self._open)
            self._head = bytes(self._open[: 4 * MAX_REJECT_TEXT])
            self._open = bytearray()

    def _close(self) -> bytes:
        """The open line as it is to be written, now that it has ended."""
        if self._dropped is None:
            line = bytes(self._open)
            self._open = bytearray()
            return line
        head = self._head.decode("utf-8", errors="ignore")[:MAX_REJECT_TEXT]
        self.cut.append(Overlong(self._dropped, head))
        self._dropped = None
        return _marker("overlong", len(self.cut) - 1)

    def feed(self, chunk: bytes) -> bytes:
        ends = _line_ends(chunk)
        if len(ends) == 0:
            self._extend(chunk)
            return b""
        first, last = int(ends[0]), int(ends[-1])
        self._extend(chunk[:first])
        out = self._close() + chunk[first : last + 1]
        self._extend(chunk[last + 1 :])
        return out

    def finish(self) -> bytes:
        return self._close()


class _NewlineNormalizer:
    """Text with every line ending (CRLF, CR, LF, mixed as they come) as LF, chunk by chunk:
    a CR at a chunk's end waits for the next chunk, which may start with its LF."""

    def __init__(self) -> None:
        self._held = ""

    def feed(self, text: str, final: bool) -> str:
        text, self._held = self._held + text, ""
        if not final and text.endswith("\r"):
            text, self._held = text[:-1], "\r"
        return text.replace("\r\n", "\n").replace("\r", "\n")


def _rewrite(source: BinaryIO, encoding: str, target: Path) -> tuple[int, tuple[Overlong, ...]]:
    """Write the open file `source` (from its start) as UTF-8 to `target`, with LF line
    endings, without NUL characters (PostgreSQL text has none) and without lines over
    `MAX_LINE_BYTES`; return the longest line written, in bytes, and the lines cut out.
    Streams: memory stays at a few chunks."""
    decoder = codecs.getincrementaldecoder(encoding)()
    meter, cutter, newlines = _LineMeter(), _LineCutter(), _NewlineNormalizer()
    source.seek(0)
    with target.open("wb") as out:
        while True:
            chunk = source.read(CHUNK_BYTES)
            text = decoder.decode(chunk, final=not chunk).replace("\x00", "")
            text = newlines.feed(text, final=not chunk)
            data = cutter.feed(text.encode("utf-8")) if chunk else cutter.finish()
            meter.feed(data)
            out.write(data)
            if not chunk:
                return meter.result(), tuple(cutter.cut)


@dataclass(frozen=True)
class Readable:
    """The file as DuckDB reads it: clean UTF-8, and how it got that way."""

    path: Path
    encoding: str
    transcoded: bool
    longest_line: int
    #: Lines cut out for their length; each stands as a marker that DuckDB rejects.
    overlong: tuple[Overlong, ...] = ()
    #: The line ending DuckDB reads: the file's own, or LF in a rewritten copy.
    newline: str = "\n"
    #: {line ending: lines} of the upload, as the survey found them.
    found_newlines: dict[str, int] = field(default_factory=dict)


def _control_share(head: bytes, encoding: str) -> float:
    """The share of the file's head that is control characters (other than tab and line
    ends) or bytes that are no character at all. Text has next to none; binary data has
    about one in seven (random bytes: 35 of 256)."""
    text = head.decode(encoding, errors="replace")
    if not text:
        return 0.0
    controls = sum(
        1 for c in text if (c < " " and c not in "\t\n\r") or "\x7f" <= c <= "\x9f" or c == "\ufffd"
    )
    return controls / len(text)


def to_utf8(path: Path, surveyed: Survey, workdir: Path, name: str | None = None) -> Readable:
    """The file as clean UTF-8 at `workdir/source.csv`: a link to `path` when it already is,
    otherwise a copy transcoded and cut to lines DuckDB can hold. `name` is the file's name
    as the user knows it, for messages."""
    name = shown(name or path.name)
    if surveyed.size == 0:
        raise IngestError(f"{name}: the file is empty")
    _refuse_non_csv(surveyed.head, name)
    head = surveyed.head
    encoding = next((bom_name for bom, bom_name in _BOMS if head.startswith(bom)), None)
    encoding = encoding or _utf16_without_bom(head)
    guess = encoding or ("utf-8" if surveyed.utf8 else "cp1252")
    if _control_share(head, guess) > MAX_CONTROL_SHARE:
        raise IngestError(
            f"{name}: does not look like a text file (its start is mostly control "
            "characters); upload the contacts as a CSV text file"
        )
    target = workdir / "source.csv"
    found = surveyed.newlines
    if encoding in ("utf-8-sig", None) and surveyed.utf8:
        encoding = encoding or "utf-8"
        clean = not surveyed.has_nul and not surveyed.mixed_newlines
        if clean and surveyed.longest_line <= MAX_LINE_BYTES:  # the common case: read as is
            _link(path, target, surveyed, name)
            newline = next(iter(found), "\n")
            return Readable(target, encoding, False, surveyed.longest_line, (), newline, found)
        longest, cut = _rewrite_same(path, surveyed, name, encoding, target)
        return Readable(target, encoding, surveyed.has_nul, longest, cut, "\n", found)
    if encoding is None:
        try:
            longest, cut = _rewrite_same(path, surveyed, name, "cp1252", target)
            return Readable(target, "windows-1252", True, longest, cut, "\n", found)
        except UnicodeDecodeError:
            encoding = "latin-1"  # the bytes Windows-1252 leaves undefined: Latin-1 has them
    try:
        longest, cut = _rewrite_same(path, surveyed, name, encoding, target)
    except UnicodeDecodeError as exc:
        raise IngestError(
            f"{name}: starts like {encoding} but byte {exc.start} of a chunk cannot be "
            f"decoded ({exc.reason}); save the file again as UTF-8"
        ) from None
    # The survey counted bytes, which in UTF-16 and UTF-32 are no line ends: not recorded.
    found = found if encoding in ("cp1252", "latin-1") else {}
    return Readable(target, encoding.removesuffix("-sig"), True, longest, cut, "\n", found)


def _rewrite_same(
    path: Path, surveyed: Survey, name: str, encoding: str, target: Path
) -> tuple[int, tuple[Overlong, ...]]:
    """`_rewrite` of `path`, once it is known to be the file surveyed."""
    try:
        source = open_input(path, label=name)
    except UserFileError as exc:
        raise IngestError(str(exc)) from None
    with source:
        _check_same(os.fstat(source.fileno()), surveyed, name)
        return _rewrite(source, encoding, target)


def _link(path: Path, target: Path, surveyed: Survey, name: str) -> None:
    """`target` as another name of `path`, the file surveyed: a hard link to that very file
    (our own name for it, which no one can point elsewhere), else a symbolic link or a copy,
    checked to be that file."""
    try:
        os.link(path, target)
    except OSError:
        try:
            target.symlink_to(path.resolve())
        except OSError:
            shutil.copyfile(path, target)
    _check_same(os.stat(target), surveyed, name)


# --- dialect ----------------------------------------------------------------------------


def _sample(path: Path) -> str:
    with path.open(encoding="utf-8", errors="replace", newline="") as handle:
        return handle.read(256 * 1024)


def _physical_lines(text: str, limit: int = 50) -> list[tuple[int, str]]:
    """(index, line) of the first non-blank physical lines of `text`."""
    numbered = enumerate(re.split(r"\r\n|\r|\n", text))
    return [(i, line) for i, line in numbered if line.strip()][:limit]


def _count_outside_quotes(line: str, delimiter: str) -> int:
    return sum(part.count(delimiter) for part in line.split('"')[0::2])


def _delimiter_by_counting(
    lines: list[tuple[int, str]], delimiters: tuple[str, ...] = DELIMITERS
) -> tuple[str, int, int] | None:
    """The delimiter (of `delimiters`) whose per-line count is most consistent, the physical
    index of the first line that has that count (lines above it are titles, not the header),
    and the count."""
    best: tuple[tuple[int, int], str, int] | None = None
    for delimiter in delimiters:
        counts = [_count_outside_quotes(line, delimiter) for _, line in lines]
        common = Counter(c for c in counts if c > 0).most_common(1)
        if not common:
            continue
        count, frequency = common[0]
        score = (frequency, count)
        if best is None or score > best[0]:
            best = (score, delimiter, lines[counts.index(count)][0])
    if best is None:
        return None
    return best[1], best[2], best[0][1]


def _misreads(dialect: dict, lines: list[tuple[int, str]], counted: tuple[str, int, int]) -> bool:
    """Whether the sniffer's dialect would reject most lines below its header where counting
    finds another delimiter or header line: what happens when a title line holding a
    delimiter ("Contacts, November") is taken for the header."""
    if (dialect["delimiter"], dialect["skip"]) == counted[:2]:
        return False
    width, below = len(dialect["columns"]), [line for i, line in lines if i > dialect["skip"]]
    fitting = sum(_count_outside_quotes(line, dialect["delimiter"]) == width - 1 for line in below)
    return fitting * 2 < len(below)


def _sniff(
    connection: duckdb.DuckDBPyConnection, path: Path, newline: str, hint: str | None
) -> dict | None:
    """DuckDB's guess at the dialect, reading lines that end in `newline`; with a spreadsheet's
    `sep=` line (`hint` its delimiter), the delimiter is the hint's and the line is skipped."""
    given = ", delim := $delim, skip := 1" if hint else ""
    parameters = {"path": str(path), "newline": _duckdb_newline(newline)}
    try:
        row = connection.execute(
            "select Delimiter, HasHeader, SkipRows, Columns "
            "from sniff_csv($path, quote := '\"', escape := '\"', ignore_errors := true, "
            f"compression := 'none', new_line := $newline{given})",
            parameters | ({"delim": hint} if hint else {}),
        ).fetchall()[0]  # fetchall: a fetchone result would keep the connection busy
    except duckdb.Error:
        return None
    if row is None:
        return None
    delimiter, has_header, skip, columns = row
    return {
        "delimiter": delimiter,
        "has_header": bool(has_header),
        "skip": int(skip),
        "columns": tuple(column["name"] for column in columns),
    }


def _duckdb_newline(newline: str) -> str:
    """A line ending as DuckDB's `new_line` option spells it."""
    return newline.replace("\r", "\\r").replace("\n", "\\n")


#: The line Excel reads (and writes, in some locales) to name a file's delimiter: `sep=;`.
_SEPARATOR_HINT = re.compile(r'\ufeff?"?sep=([^"\r\nA-Za-z0-9])"?[,;\t|]*', re.IGNORECASE)


def _separator_hint(lines: list[tuple[int, str]]) -> str | None:
    """The delimiter a `sep=` line on the file's first line names, if it has one."""
    if not lines or lines[0][0] != 0:
        return None
    match = _SEPARATOR_HINT.fullmatch(lines[0][1].strip(" "))  # not a tab: `sep=\t` names one
    return match.group(1) if match else None


def _first_record(text: str, delimiter: str, skip: int) -> list[str]:
    """The first record after `skip` lines, parsed as CSV (one record, however many lines)."""
    rest = re.split(r"\r\n|\r|\n", text, maxsplit=skip)[-1] if skip else text
    rest = rest.lstrip("\r\n")
    try:
        return next(csv.reader(io.StringIO(rest, newline=""), delimiter=delimiter), [])
    except csv.Error:
        return []


_DELIMITER_NAMES = {"\t": "tab"}
_NEWLINE_NAMES = {"\r\n": "CRLF", "\r": "CR", "\n": "LF"}


def _newline_notes(found: dict[str, int]) -> list[str]:
    if len(found) < 2:
        return []
    counts = ", ".join(f"{_NEWLINE_NAMES[end]}: {count:,}" for end, count in found.items())
    return [f"lines end in different ways ({counts}); each was read as a line end"]


def sniff_format(
    connection: duckdb.DuckDBPyConnection, readable: Readable, name: str
) -> FileFormat:
    path = readable.path
    text = _sample(path)
    lines = _physical_lines(text)
    if not lines:
        raise IngestError(f"{name}: the file has no text in it, only blank lines")
    hint = stated = _separator_hint(lines)
    counted = _delimiter_by_counting(lines[1:] if hint else lines, (hint,) if hint else DELIMITERS)
    if hint and counted is None:
        # No line below a `sep=` line holds its delimiter (a file saved again with another
        # one, the line kept): the lines' own delimiter is read instead, or every row would
        # be one field, rejected as an address with commas in it.
        counted = _delimiter_by_counting(lines[1:])
        hint = counted[0] if counted else hint
    if counted is not None:
        _check_width(counted[2] + 1, name)  # before DuckDB reserves memory for every column
    dialect = _sniff(connection, path, readable.newline, hint)
    notes = _newline_notes(readable.found_newlines)
    if hint != stated:
        notes.append(
            f"the first line (sep={stated}) names a delimiter no line below it holds; the "
            f"file was read with {_DELIMITER_NAMES.get(hint, hint)!r} and the line is not data"
        )
    elif hint:
        notes.append(f"the first line (sep={hint}) names the delimiter; it is not read as data")
    if dialect is None or (
        counted is not None and (len(dialect["columns"]) == 1 or _misreads(dialect, lines, counted))
    ):
        # The sniffer gave up on a messy file, saw one column where the lines show a
        # delimiter, or took a title line for the header: trust the count of delimiters.
        if counted is None:
            raise IngestError(f"{name}: cannot tell how the file's fields are separated")
        delimiter, skip, _ = counted
        dialect = {"delimiter": delimiter, "has_header": True, "skip": skip, "columns": ()}
    if dialect["skip"] > (1 if hint else 0):
        notes.append(f"skipped {dialect['skip']} line(s) above the header")
    first = _first_record(text, dialect["delimiter"], dialect["skip"])
    has_header = not any(_EMAIL_LIKE.fullmatch(cell.strip()) for cell in first)
    if not has_header:
        notes.append("the first line holds an address, so the file has no header row")
    columns = dialect["columns"] if has_header and dialect["has_header"] else ()
    if len(columns) != len(first):
        columns = (
            _header_names(first) if has_header else tuple(f"column{i}" for i in range(len(first)))
        )
    if not columns:
        raise IngestError(f"{name}: no columns found")
    _check_width(len(columns), name)
    return FileFormat(
        encoding=readable.encoding,
        delimiter=dialect["delimiter"],
        has_header=has_header,
        skipped_lines=dialect["skip"],
        columns=tuple(columns),
        newline=readable.newline,
        transcoded=readable.transcoded,
        notes=tuple(notes),
    )


def _check_width(columns: int, name: str) -> None:
    if columns > MAX_COLUMNS:
        raise IngestError(
            f"{name}: the file has {columns:,} columns; at most {MAX_COLUMNS:,} can be read. "
            "Remove the columns you do not need and upload it again"
        )


def _header_names(cells: list[str]) -> tuple[str, ...]:
    """Header cells as column names: blanks named by position, repeats numbered (DuckDB's way)."""
    names: list[str] = []
    seen: Counter[str] = Counter()
    for i, cell in enumerate(cells):
        name = cell.strip() or f"column{i}"
        if seen[name]:
            name = f"{name}_{seen[name]}"
        seen[cell.strip() or f"column{i}"] += 1
        names.append(name)
    return tuple(names)


# --- rows -------------------------------------------------------------------------------


class CsvScan:
    """The rows of a UTF-8 CSV file, read by DuckDB with rejects set aside.

    `count()` makes the first pass (records and rejects); `batches()` makes the second and
    yields polars frames of at most `BATCH_ROWS` rows and about `BATCH_CELLS` cells. Their
    columns are named by position (`__in_0`, ...; see `positions`) so no header can collide
    with the `__line` column, and no header text ever goes into DuckDB's SQL.
    """

    def __init__(
        self, connection: duckdb.DuckDBPyConnection, readable: Readable, fmt: FileFormat, name: str
    ):
        self.connection = connection
        self.path = readable.path
        self.format = fmt
        self.line_bytes = max(MIN_LINE_BYTES, readable.longest_line + 1024)
        self.overlong = readable.overlong
        width = len(fmt.columns)
        self.batch_rows = min(BATCH_ROWS, max(MIN_BATCH_ROWS, BATCH_CELLS // width))
        _fit_to_width(connection, width)
        self.rejects: list[Reject] = []
        #: Lines cut out for a quote that never closes (see `count`), as reported.
        self.unclosed: list[str] = []
        self.rows = 0
        self._valid_before_reject = np.zeros(0, dtype=np.int64)
        self._first_line = fmt.skipped_lines + (2 if fmt.has_header else 1)

    def _read_csv(self, table: str) -> str:
        """The read_csv call, recording the lines it skips in `table`. Both passes record
        them: with `ignore_errors` alone DuckDB resumes differently after an unbalanced
        quote, and the line numbers of the second pass would no longer hold."""
        columns = ", ".join(f"'{c}': 'VARCHAR'" for c in positions(len(self.format.columns)))
        return (
            "read_csv($path, delim := $delim, quote := '\"', escape := '\"', "
            "new_line := $newline, header := $header, skip := $skip, auto_detect := false, "
            "compression := 'none', "
            f"columns := {{{columns}}}, max_line_size := {self.line_bytes}, "
            f"store_rejects := true, rejects_table := '{table}', "
            f"rejects_scan := '{table}_scans')"
        )

    def _parameters(self) -> dict:
        return {
            "path": str(self.path),
            "delim": self.format.delimiter,
            "newline": _duckdb_newline(self.format.newline),
            "header": self.format.has_header,
            "skip": self.format.skipped_lines,
        }

    def _count_pass(self) -> list[tuple]:
        """Count the records and return DuckDB's rejects, one row per line: (line, kind,
        message, raw text, holds a marker, byte position of the error)."""
        table = f"rejects_{uuid.uuid4().hex}"
        # fetchall: the rejects table is written when the query finishes, not at its first row.
        [(self.rows,)] = self.connection.execute(
            f"select count(*) from {self._read_csv(table)}", self._parameters()
        ).fetchall()
        found = self.connection.execute(
            f"""
            select line, arg_min(error_type, column_idx), arg_min(error_message, column_idx),
                   arg_min(csv_line, column_idx), bool_or(error_type = 'INVALID ENCODING'),
                   arg_min(byte_position, column_idx)
            from {table} group by line order by line
            """
        ).fetchall()
        self.connection.execute(f"drop table {table}; drop table {table}_scans")
        return found

    def count(self) -> int:
        found = self._count_pass()
        # A quote that never closes makes DuckDB swallow the lines after it, up to the next
        # quote, into one reject, or (past its line buffer) drop them without a word. Such a
        # line is cut out (a marker stands in for it, as for an over-long line) and the file
        # read again, so it rejects only itself and the lines after it load; a line a cut
        # uncovers may hold another, hence the passes.
        for _ in range(MAX_QUOTE_PASSES):
            quotes = [int(at) for _, kind, _, _, _, at in found if kind == "UNQUOTED VALUE" and at]
            if not quotes or not self._cut_unclosed(quotes):
                break
            found = self._count_pass()
        self.rejects = [
            self._reject(int(line), kind, message, (raw or "").lstrip("\r\n"), cut)
            for line, kind, message, raw, cut, _ in found
            if (raw or "").strip()  # a blank line is no record, not a reject
        ]
        # DuckDB skips an empty line without a word, yet counts it in its line numbers (as a
        # spreadsheet shows it as a row): the rows after it are numbered past it too.
        blank = _blank_records(self.path, self.format.newline, self.format.delimiter)
        if blank:
            self._first_line = _first_data_line(blank, self.format)
        skipped = {int(row[0]) for row in found} | {n for n in blank if n >= self._first_line}
        lines = np.array(sorted(skipped), dtype=np.int64)
        # How many good records precede each line that is no row: the offsets for numbering.
        self._valid_before_reject = lines - self._first_line - np.arange(len(lines))
        return self.rows

    def rejects_frame(self) -> pl.DataFrame:
        return pl.DataFrame(
            {
                "line_number": [r.line for r in self.rejects],
                "raw_row": [r.raw_row for r in self.rejects],
                "reason": [r.reason for r in self.rejects],
            },
            schema={"line_number": pl.Int64, "raw_row": pl.String, "reason": pl.String},
        )

    def _cut_unclosed(self, quotes: list[int]) -> bool:
        """Copy the file with each line that opens a quote it never closes (found by the byte
        positions DuckDB gives for its errors) replaced by a marker, and read that copy from
        now on. False when there is no such line (nothing is changed then)."""
        with self.path.open("rb") as source:
            starts = {_unclosed_line(source, at) for at in quotes}
        starts.discard(None)
        if not starts:
            return False
        target = self.path.with_name(f"source-{len(self.unclosed)}.csv")
        with self.path.open("rb") as source, target.open("wb") as out:
            at = 0
            for start in sorted(starts):
                _copy_range(source, out, at, start)
                line = _read_line(source, start)
                out.write(_marker("unclosed", len(self.unclosed)))
                self.unclosed.append(_clip(line.decode("utf-8", errors="replace")))
                at = start + len(line)
            _copy_range(source, out, at, None)
        self.path = target
        return True

    def _reject(self, line: int, kind: str, message: str, raw: str, cut: bool) -> Reject:
        if cut and (marker := _MARKER.search(raw)) and marker.group(1) == "unclosed":
            text = self.unclosed[int(marker.group(2))]
            return Reject(line, text, _UNCLOSED)
        if cut and (marker := _MARKER.search(raw)):
            overlong = self.overlong[int(marker.group(2))]
            if marker.group(0) == raw.strip("?"):  # the marker stands alone on its line
                return Reject(line, overlong.raw_row(), overlong.reason(line))
            # A quoted value spanning lines holds it: the line read is the record's first.
            return Reject(line, _clip(raw), f"{overlong.reason(line)} (inside a quoted value)")
        return Reject(line, _clip(raw), _reason(kind, message, raw, self.format.delimiter))

    @property
    def total_records(self) -> int:
        return self.rows + len(self.rejects)

    def batches(self) -> Iterator[pl.DataFrame]:
        table = f"rejects_{uuid.uuid4().hex}"
        relation = self.connection.sql(
            f"select * from {self._read_csv(table)}", params=self._parameters()
        )
        done = 0
        for batch in relation.to_arrow_reader(self.batch_rows):
            frame = pl.from_arrow(batch)
            assert isinstance(frame, pl.DataFrame)
            frame = frame.rename(dict(zip(frame.columns, positions(frame.width), strict=True)))
            index = np.arange(done, done + frame.height, dtype=np.int64)
            skipped = np.searchsorted(self._valid_before_reject, index, side="right")
            frame = frame.with_columns(
                pl.Series(LINE, index + self._first_line + skipped, dtype=pl.Int64)
            )
            done += frame.height
            yield frame
        self.connection.execute(f"drop table if exists {table}; drop table if exists {table}_scans")


def _has_blank_line(path: Path, newline: str) -> bool:
    """Whether a line of `path` is empty with more text after it (empty lines at the end
    number nothing). One `bytes.find` per chunk: what a file without such lines costs."""
    pattern, tail = newline.encode() * 2, b""
    with path.open("rb") as handle:
        chunk = handle.read(CHUNK_BYTES)
        if chunk.startswith(newline.encode()):
            return True
        while chunk:
            following = handle.read(CHUNK_BYTES)
            chunk = chunk if following else chunk.rstrip(b"\r\n")
            if pattern in chunk or pattern in tail + chunk[: len(pattern)]:
                return True
            tail, chunk = chunk[-len(pattern) :], following
    return False


def _blank_records(path: Path, newline: str, delimiter: str) -> set[int]:
    """The line numbers (DuckDB's: records counted from 1, an empty line one of them) of the
    empty lines of `path` outside quoted values. Only a file that has empty lines is parsed
    (by the csv module, whose quoting is DuckDB's: a quote opens a value only at its start)."""
    if not _has_blank_line(path, newline):
        return set()
    csv.field_size_limit(max(csv.field_size_limit(), 2 * MAX_LINE_BYTES))
    blank: set[int] = set()
    with path.open(encoding="utf-8", errors="replace", newline="") as handle:
        try:
            for number, record in enumerate(csv.reader(handle, delimiter=delimiter), 1):
                if not record:
                    blank.add(number)
        except csv.Error:  # not read as DuckDB read it: the numbers found so far stand
            pass
    return blank


def _first_data_line(blank: set[int], fmt: FileFormat) -> int:
    """The line of the first row: DuckDB passes over empty lines to the header, or (without
    one) to the first row, after the lines it was told to skip."""
    line = fmt.skipped_lines + 1
    while line in blank:
        line += 1
    return line + 1 if fmt.has_header else line


#: Passes over a file cutting out lines whose quote never closes (each pass reads the file
#: once more; the lines a pass uncovers rarely hold another such quote).
MAX_QUOTE_PASSES = 3
_UNCLOSED = (
    "a quoted value is not closed (unbalanced quote); only this line is rejected, "
    "and the lines after it are read on their own"
)


def _unclosed_line(handle: BinaryIO, error_at: int) -> int | None:
    """The offset of the line holding the quote DuckDB reports at `error_at` (its positions
    count from 1 in the versions measured; from 0 is tried too), when that line opens a quote
    it does not close; None otherwise (a value closed and followed by more text, `"Ann"e`,
    is a reject of its own line already)."""
    for quote in (error_at - 1, error_at):
        handle.seek(max(quote, 0))
        if quote >= 0 and handle.read(1) == b'"':
            start = _line_start(handle, quote)
            return start if _read_line(handle, start).count(b'"') % 2 else None
    return None


def _line_start(handle: BinaryIO, at: int) -> int:
    """The offset of the first byte of the physical line holding byte `at`."""
    end = at
    while end > 0:
        begin = max(0, end - 64 * 1024)
        handle.seek(begin)
        window = handle.read(end - begin)
        found = max(window.rfind(b"\n"), window.rfind(b"\r"))
        if found >= 0:
            return begin + found + 1
        end = begin
    return 0


def _read_line(handle: BinaryIO, start: int) -> bytes:
    """The physical line at `start`, without its line end (bounded: lines over
    `MAX_LINE_BYTES` were cut before DuckDB read the file)."""
    handle.seek(start)
    line = bytearray()
    while chunk := handle.read(64 * 1024):
        end = re.search(rb"[\r\n]", chunk)
        if end:
            return bytes(line + chunk[: end.start()])
        line += chunk
    return bytes(line)


def _copy_range(source: BinaryIO, out: BinaryIO, start: int, end: int | None) -> None:
    """Copy bytes [start, end) of `source` to `out` (to its end when `end` is None)."""
    source.seek(start)
    left = None if end is None else end - start
    while left is None or left > 0:
        chunk = source.read(CHUNK_BYTES if left is None else min(CHUNK_BYTES, left))
        if not chunk:
            break
        out.write(chunk)
        if left is not None:
            left -= len(chunk)


#: Above this many columns DuckDB reads with one thread and a memory limit sized to the
#: width (see `MAX_COLUMNS`); narrower files, the common case, keep both threads and 512 MB.
WIDE_COLUMNS = 1_000
_MEMORY_PER_COLUMN = 256 << 10


def _fit_to_width(connection: duckdb.DuckDBPyConnection, width: int) -> None:
    """Let DuckDB's CSV reader reserve what `width` columns take, instead of failing with an
    out-of-memory error: its reservations grow with columns x threads, while what it really
    keeps resident stays near ~100 KiB per column (measured: 5,000 columns, one thread,
    ~400 MB resident under a 1 GB limit)."""
    if width > WIDE_COLUMNS:
        limit_mb = max(512, width * _MEMORY_PER_COLUMN >> 20)
        connection.execute("set threads = 1")
        connection.execute(f"set memory_limit = '{limit_mb}MB'")


def positions(width: int) -> list[str]:
    """Column names by position, for frames whose headers are user data."""
    return [f"__in_{i}" for i in range(width)]


def _clip(raw: str) -> str:
    if len(raw) <= MAX_REJECT_TEXT:
        return raw
    return f"{raw[:MAX_REJECT_TEXT]}… ({len(raw) - MAX_REJECT_TEXT:,} more characters)"


_FOUND = re.compile(r"Expected Number of Columns: (\d+) Found: (\d+)")


def _fields(raw: str, delimiter: str) -> int:
    """The fields of one record as written, counted with the csv module: DuckDB stops
    counting at the first field too many ("Found: 6" for a 9-field line of 5 columns)."""
    try:
        return len(next(csv.reader(io.StringIO(raw, newline=""), delimiter=delimiter), []))
    except csv.Error:
        return 0


def _reason(kind: str, message: str, raw: str, delimiter: str) -> str:
    if kind in ("TOO MANY COLUMNS", "MISSING COLUMNS") and (match := _FOUND.search(message)):
        expected, found = int(match.group(1)), int(match.group(2))
        if kind == "TOO MANY COLUMNS":
            found = max(found, _fields(raw, delimiter))  # `raw` may be clipped: never fewer
            hint = " (a value holding the delimiter needs quotes)"
        else:
            found = _fields(raw, delimiter) or found
            hint = ""
        return f"the line has {found} fields but the header has {expected}{hint}"
    if kind == "UNQUOTED VALUE":
        spans = raw.count("\n") + 1
        swallowed = f"; it runs over {spans} lines, which are rejected with it" if spans > 1 else ""
        return f"a quoted value is not closed properly (unbalanced quote){swallowed}"
    # The parser's own message names its options and internals, not the user's file: the
    # rest say what is wrong with the line in the file's terms.
    return _PLAIN_REASONS.get(
        kind, "the line cannot be read as CSV (check its quotes and delimiters)"
    )


_PLAIN_REASONS = {
    "LINE SIZE OVER MAXIMUM": "the line is too long to be read",
    "INVALID ENCODING": "the line holds bytes that are not text",
    "INVALID UNICODE": "the line holds bytes that are not text",
    "CAST ERROR": "a value in the line cannot be read as text",
}


def open_duckdb(workdir: Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB that spills to `workdir` and keeps its memory bounded."""
    return duckdb.connect(
        config={
            "memory_limit": "512MB",
            "temp_directory": str(workdir),
            "preserve_insertion_order": True,  # batches come in file order: line numbers hold
        }
    )


__all__ = [
    "LINE",
    "CsvScan",
    "FileFormat",
    "Reject",
    "open_duckdb",
    "sniff_format",
    "to_utf8",
]
