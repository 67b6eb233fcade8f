"""Files as they come: every encoding and delimiter, and every way a CSV goes wrong."""

from __future__ import annotations

import codecs
import gzip
import json
import os
import random
import subprocess
import sys

import duckdb
import polars as pl
import pytest
import sqlalchemy as sa

from engine.config import PROJECT_ROOT
from engine.db import tenant_transaction
from engine.ingest import IngestError, ingest_file, preview_file
from engine.tenants import tenant_id
from tests.factories import write_contacts_csv

NAMES = [
    ("zoe@example.com", "Zoë", "Müller & Søn"),
    ("jose@example.com", "José", "Ça Va “Café”"),
    ("anna@example.com", "Anna", "Smith, Jones, “Partners”"),
]
ENCODINGS = {
    "utf-8": lambda text: text.encode("utf-8"),
    "utf-8 with BOM": lambda text: codecs.BOM_UTF8 + text.encode("utf-8"),
    "utf-16 with BOM": lambda text: text.encode("utf-16"),
    "utf-16-le without BOM": lambda text: text.encode("utf-16-le"),
    "windows-1252": lambda text: text.encode("cp1252"),
    "latin-1": lambda text: text.encode("latin-1"),
}
DELIMITERS = {"comma": ",", "semicolon": ";", "tab": "\t", "pipe": "|"}


@pytest.fixture
def tenant(database):
    return tenant_id(database.app, "default")


def load(database, tenant, path, now, **options):
    return ingest_file(database.app, tenant, path, "list", now, **options)


def contacts(database, tenant):
    with tenant_transaction(database.app, tenant) as conn:
        return conn.execute(
            sa.text(
                "select email, first_name, company, attributes from app.contacts order by email"
            )
        ).all()


def rejects(database, tenant):
    with tenant_transaction(database.app, tenant) as conn:
        return conn.execute(
            sa.text("select line_number, reason, raw_row from app.upload_rejects order by 1")
        ).all()


def csv_text(delimiter: str, rows=NAMES, newline="\r\n") -> str:
    def cell(value: str) -> str:
        if delimiter in value or '"' in value:
            return '"' + value.replace('"', '""') + '"'
        return value

    lines = [delimiter.join(["Email", "First Name", "Company"])]
    lines += [delimiter.join(cell(v) for v in row) for row in rows]
    return newline.join(lines) + newline


#: Latin-1 has no curly quotes, and byte 0x81 (undefined in Windows-1252) forces Latin-1.
LATIN_NAMES = [
    (email, first, company.replace("“", '"').replace("”", '"') + ("\u0081" if i == 0 else ""))
    for i, (email, first, company) in enumerate(NAMES)
]


@pytest.mark.parametrize("delimiter", DELIMITERS)
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_every_encoding_and_delimiter_reads_the_same_contacts(
    database, tenant, now, tmp_path, encoding, delimiter
):
    rows = LATIN_NAMES if encoding == "latin-1" else NAMES
    path = tmp_path / "export.csv"
    path.write_bytes(ENCODINGS[encoding](csv_text(DELIMITERS[delimiter], rows)))
    result = load(database, tenant, path, now)
    assert (result.inserted, result.rejected) == (3, 0), result
    got = {c.email: (c.first_name, c.company) for c in contacts(database, tenant)}
    assert got == {email: (first, company) for email, first, company in rows}
    assert result.file_format["delimiter"] == DELIMITERS[delimiter]
    assert result.file_format["encoding"] == {
        "utf-8 with BOM": "utf-8-sig",
        "utf-16 with BOM": "utf-16",
        "utf-16-le without BOM": "utf-16-le",
    }.get(encoding, encoding)


def test_the_detected_encoding_is_recorded(database, tenant, now, tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes(csv_text(";").encode("cp1252"))
    result = load(database, tenant, path, now)
    assert result.file_format["encoding"] == "windows-1252"
    assert result.file_format["transcoded"] is True


def test_an_empty_file_fails_and_says_so(database, tenant, now, tmp_path):
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    with pytest.raises(IngestError, match="empty.csv: the file is empty"):
        load(database, tenant, path, now)


def test_a_blank_file_fails_and_says_so(database, tenant, now, tmp_path):
    path = tmp_path / "blank.csv"
    path.write_text("\n\n  \n")
    with pytest.raises(IngestError, match="only blank lines"):
        load(database, tenant, path, now)


def test_a_header_only_file_fails_naming_its_columns(database, tenant, now, tmp_path):
    path = tmp_path / "header.csv"
    path.write_text("Email,First Name\n")
    with pytest.raises(
        IngestError, match=r"has a header row \(Email, First Name\) but no data rows"
    ):
        load(database, tenant, path, now)
    with tenant_transaction(database.app, tenant) as conn:
        status = conn.execute(sa.text("select status from app.upload_batches")).scalar()
    assert status == "failed"


def test_a_workbook_is_refused_with_what_to_do(database, tenant, now, tmp_path):
    path = tmp_path / "contacts.csv"
    path.write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    with pytest.raises(IngestError, match="Excel workbook .* Save As → CSV UTF-8"):
        load(database, tenant, path, now)


def test_a_file_without_a_header_row_is_read_by_its_content(database, tenant, now, tmp_path):
    path = tmp_path / "bare.csv"
    path.write_text("ada@example.com,Ada\ngrace@example.com,Grace\n")
    result = load(database, tenant, path, now)
    assert (result.inserted, result.file_format["has_header"]) == (2, False)
    assert result.column_mapping == {"column0": "email"}
    assert [c.attributes for c in contacts(database, tenant)] == [
        {"column1": "Ada"},
        {"column1": "Grace"},
    ]


def test_title_lines_above_the_header_are_skipped(database, tenant, now, tmp_path):
    path = tmp_path / "hubspot.csv"
    path.write_text(
        "Contacts export\n"
        "Generated 2026-11-01\n"
        "Email,First Name,Company\n"
        "ada@example.com,Ada,Engines\n"
        "grace@example.com,Grace,Navy\n"
        "alan@example.com,Alan,Bletchley\n"
    )
    result = load(database, tenant, path, now)
    assert (result.inserted, result.file_format["skipped_lines"]) == (3, 2)


def test_duplicate_headers_keep_both_columns(database, tenant, now, tmp_path):
    path = tmp_path / "dup.csv"
    path.write_text("Email,Email,Name,\nada@example.com,ada@home.example,Ada,x\n")
    result = load(database, tenant, path, now)
    assert result.inserted == 1
    [contact] = contacts(database, tenant)
    assert contact.email == "ada@example.com"
    assert contact.attributes == {"Email_1": "ada@home.example", "column3": "x"}


def test_ragged_rows_are_rejected_and_the_rest_keep_their_line_numbers(
    database, tenant, now, tmp_path
):
    rows = [f"p{i}@example.com,P{i},Co" for i in range(1, 21)]
    rows[4] = "long@example.com,Long,Co,extra"  # line 6
    rows[9] = "short@example.com"  # line 11
    rows[14] = "bad address,Bad,Co"  # line 16
    path = tmp_path / "ragged.csv"
    path.write_text("Email,First Name,Company\n" + "\n".join(rows) + "\n")
    result = load(database, tenant, path, now)
    assert (result.total_rows, result.inserted, result.rejected) == (20, 17, 3)
    found = rejects(database, tenant)
    assert [(r.line_number, r.raw_row) for r in found] == [
        (6, "long@example.com,Long,Co,extra"),
        (11, "short@example.com"),
        (16, "bad address,Bad,Co"),
    ]
    assert "4 fields but the header has 3" in found[0].reason
    assert "1 fields but the header has 3" in found[1].reason


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"], ids=["LF", "CRLF", "CR"])
def test_rows_after_blank_lines_keep_their_spreadsheet_line_numbers(
    database, tenant, now, tmp_path, newline
):
    """DuckDB skips an empty line but counts it: a row below one was reported lines too
    high up (line 4 for the invalid address on line 8). An empty line inside a quoted value
    is part of the value, not a row."""
    lines = [
        "Email,Name",
        'a@example.com,"Ann',  # line 2: a value over three lines, one with nothing on it
        "",
        'Lee"',
        "",  # line 3
        "b@example.com,Bob",
        "bad@example.com,Bad,extra",  # line 5
        "",
        "",
        "not an address,Cy",  # line 8
        'd@example.com,5" screen',
        "",
        "also not one,Di",  # line 11
        "",
    ]
    path = tmp_path / "blank.csv"
    path.write_bytes(newline.join(lines).encode())
    result = load(database, tenant, path, now)
    assert [(r.line_number, r.raw_row) for r in rejects(database, tenant)] == [
        (5, "bad@example.com,Bad,extra"),
        (8, "not an address,Cy"),
        (11, "also not one,Di"),
    ]
    assert (result.inserted, result.rejected) == (3, 3)


def test_empty_lines_above_the_header_are_counted_too(database, tenant, now, tmp_path):
    path = tmp_path / "leading.csv"
    path.write_text("\n\nEmail,Name\na@example.com,Ann\n\nnot an address,Bo\n")
    load(database, tenant, path, now)
    assert [r.line_number for r in rejects(database, tenant)] == [6]


def test_an_unbalanced_quote_rejects_only_its_own_line(database, tenant, now, tmp_path):
    rows = [f"p{i}@example.com,P{i},Co" for i in range(1, 11)]
    rows[3] = 'q@example.com,"Unclosed,Co'  # line 5 opens a quote ...
    rows[6] = 'r@example.com,"Closed, properly",Co'  # ... that a later line's quote would close
    path = tmp_path / "quotes.csv"
    path.write_text("Email,First Name,Company\n" + "\n".join(rows) + "\n")
    result = load(database, tenant, path, now)
    [reject] = rejects(database, tenant)
    assert (reject.line_number, reject.raw_row) == (5, 'q@example.com,"Unclosed,Co')
    assert reject.reason == (
        "a quoted value is not closed (unbalanced quote); only this line is rejected, "
        "and the lines after it are read on their own"
    )
    assert (result.total_rows, result.inserted, result.rejected) == (10, 9, 1)
    emails = {c.email for c in contacts(database, tenant)}
    assert {"p5@example.com", "r@example.com", "p10@example.com"} <= emails


def test_quotes_left_open_to_the_end_of_the_file_reject_only_their_lines(
    database, tenant, now, tmp_path
):
    rows = [f"p{i}@example.com,P{i}" for i in range(1, 9)]
    rows[1] = 'a@example.com,"Ann'  # line 3: open to the end of the file ...
    rows[4] = 'b@example.com,"Bob'  # line 6: ... and, once line 3 is cut, this one too
    path = tmp_path / "open.csv"
    path.write_bytes(("Email,Name\r\n" + "\r\n".join(rows) + "\r\n").encode())
    result = load(database, tenant, path, now)
    assert [(r.line_number, r.raw_row) for r in rejects(database, tenant)] == [
        (3, 'a@example.com,"Ann'),
        (6, 'b@example.com,"Bob'),
    ]
    assert (result.inserted, result.rejected) == (6, 2)


def test_a_quote_left_open_early_in_a_long_file_costs_only_its_line(
    database, tenant, now, tmp_path
):
    """Past DuckDB's line buffer (1 MiB here) the lines a runaway quote swallowed were lost
    without a reject of their own: 39,989 contacts of this file went missing."""
    rows = [f"p{i}@example.com,P{i}" for i in range(40_000)]
    rows[10] = 'q@example.com,"Unclosed'  # line 12
    path = tmp_path / "long.csv"
    path.write_text("Email,Name\n" + "\n".join(rows) + "\n")
    result = load(database, tenant, path, now)
    assert (result.total_rows, result.inserted, result.rejected) == (40_000, 39_999, 1)
    [reject] = rejects(database, tenant)
    assert (reject.line_number, reject.raw_row) == (12, 'q@example.com,"Unclosed')


def test_nul_bytes_are_removed(database, tenant, now, tmp_path):
    path = tmp_path / "nul.csv"
    path.write_bytes(b"Email,First Name\nada@exa\x00mple.com,A\x00da\n")
    result = load(database, tenant, path, now)
    assert result.inserted == 1
    [contact] = contacts(database, tenant)
    assert (contact.email, contact.first_name) == ("ada@example.com", "Ada")


def test_long_fields_load_and_an_overlong_line_is_rejected(database, tenant, now, tmp_path):
    from engine.ingest.clean import MAX_VALUE_BYTES

    notes = "n" * 200_000
    path = tmp_path / "long.csv"
    path.write_text(
        "Email,Notes\n"
        f"ada@example.com,{notes}\n"
        f"huge@example.com,{'x' * (MAX_VALUE_BYTES + 10)}\n"
        "grace@example.com,short\n"
    )
    result = load(database, tenant, path, now)
    assert (result.inserted, result.rejected) == (2, 1)
    ada = next(c for c in contacts(database, tenant) if c.email == "ada@example.com")
    assert ada.attributes["Notes"] == notes
    [reject] = rejects(database, tenant)
    assert reject.line_number == 3 and "over the limit of 1 MiB" in reject.reason
    assert len(reject.raw_row) < 20_000  # the report keeps a readable prefix


def test_a_hundred_thousand_rows_with_invalid_and_duplicate_lines(database, tenant, now, tmp_path):
    path, expected = write_contacts_csv(tmp_path / "big.csv", 100_000, seed=7)
    result = load(database, tenant, path, now)
    assert result.total_rows == 100_000
    assert result.rejected == expected.invalid
    assert result.duplicates == expected.duplicates
    assert result.inserted == expected.distinct
    with tenant_transaction(database.app, tenant) as conn:
        count = conn.execute(sa.text("select count(*) from app.contacts")).scalar()
        members = conn.execute(sa.text("select count(*) from app.contact_list_members")).scalar()
    assert count == members == expected.distinct


@pytest.mark.parametrize(
    "name", ["leads[12].csv", "leads?.csv", "*.csv", "{leads1,leads2}.csv", "~leads.csv"]
)
def test_a_file_name_with_glob_characters_is_read_as_itself(database, tenant, now, tmp_path, name):
    for i in (1, 2):
        (tmp_path / f"leads{i}.csv").write_text(f"Email\nother{i}@example.com\n")
    path = tmp_path / name
    path.write_text("Email\nself@example.com\n")
    assert preview_file(path).rows["Email"].to_list() == ["self@example.com"]
    result = load(database, tenant, path, now)
    assert (result.total_rows, result.inserted) == (1, 1)
    assert [c.email for c in contacts(database, tenant)] == ["self@example.com"]


def test_a_plain_csv_named_gz_is_read_as_csv(database, tenant, now, tmp_path):
    path = tmp_path / "leads.csv.gz"
    path.write_text("Email\nada@example.com\n")
    assert load(database, tenant, path, now).inserted == 1


def test_a_real_gzip_file_is_refused_with_what_to_do(database, tenant, now, tmp_path):
    path = tmp_path / "leads.csv.gz"
    path.write_bytes(gzip.compress(b"Email\nada@example.com\n"))
    with pytest.raises(IngestError, match="leads.csv.gz: this is a gzip-compressed file"):
        load(database, tenant, path, now)


def test_a_five_thousand_column_file_loads(database, tenant, now, tmp_path):
    width, rows = 5_000, 300
    path = tmp_path / "wide.csv"
    with path.open("w") as out:
        out.write("Email," + ",".join(f"c{i}" for i in range(1, width)) + "\n")
        for r in range(rows):
            out.write(f"p{r}@example.com," + ",".join(f"v{i}" for i in range(1, width)) + "\n")
    result = load(database, tenant, path, now)
    assert (result.total_rows, result.inserted, result.rejected) == (rows, rows, 0)
    [contact] = [c for c in contacts(database, tenant) if c.email == "p7@example.com"]
    assert len(contact.attributes) == width - 1 and contact.attributes["c4999"] == "v4999"


def test_a_file_wider_than_the_column_limit_is_refused_naming_both(database, tenant, now, tmp_path):
    from engine.ingest.source import MAX_COLUMNS

    path = tmp_path / "wider.csv"
    width = MAX_COLUMNS + 1
    path.write_text(
        "Email," + ",".join(f"c{i}" for i in range(1, width)) + "\n"
        "ada@example.com" + ",x" * (width - 1) + "\n"
    )
    with pytest.raises(
        IngestError, match=f"wider.csv: the file has {width:,} columns; at most {MAX_COLUMNS:,}"
    ):
        load(database, tenant, path, now)


#: Loads a file with one 200 MB line in a process of its own and prints its peak memory.
_HUGE_LINE_LOAD = """
import json, sys
from datetime import datetime
from pathlib import Path
from engine.config import Settings
from engine.db import Database
from engine.ingest import ingest_file
from engine.tenants import tenant_id

db = Database(Settings.from_env())
result = ingest_file(
    db.app, tenant_id(db.app, "default"), Path(sys.argv[1]), "list",
    datetime.fromisoformat(sys.argv[2]),
)
# VmHWM, not getrusage: a child's ru_maxrss starts at its parent's size when it forked.
peak_kb = next(
    int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")
)
print(json.dumps({
    "peak_mb": peak_kb / 1024,
    "counts": [result.total_rows, result.inserted, result.rejected],
}))
"""


def test_a_200_mb_line_is_a_reject_of_its_own_in_bounded_memory(database, tenant, now, tmp_path):
    path = tmp_path / "huge.csv"
    with path.open("w") as out:
        out.write("Email,Notes\n")
        out.write("".join(f"p{i}@example.com,n\n" for i in range(2, 5)))  # lines 2-4
        out.write("huge@example.com,")  # line 5: 200 MB
        for _ in range(200):
            out.write("x" * 1_000_000)
        out.write("\n")
        out.write('q@example.com,"two\nlines"\n')  # line 6
        out.write("not an address,n\n")  # line 7
        out.write("r@example.com,n\n")  # line 8
    env = {
        **os.environ,
        "DATABASE_URL": database.settings.database_url,
        "PENGUIN_HOME": str(database.settings.home),
    }
    done = subprocess.run(
        [sys.executable, "-c", _HUGE_LINE_LOAD, str(path), now.isoformat()],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=PROJECT_ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["counts"] == [7, 5, 2]
    assert report["peak_mb"] < 600, report  # the line once took a 16 x 256 MiB buffer
    found = rejects(database, tenant)
    assert [r.line_number for r in found] == [5, 7]
    assert found[0].reason == "line 5 is 191 MiB long; lines over 8 MiB are refused"
    assert found[0].raw_row.startswith("huge@example.com,xxx") and len(found[0].raw_row) < 20_000
    assert "'not an address' is not valid" in found[1].reason
    assert {c.email for c in contacts(database, tenant)} == {
        "p2@example.com",
        "p3@example.com",
        "p4@example.com",
        "q@example.com",
        "r@example.com",
    }


def test_a_line_with_too_many_fields_is_reported_with_its_real_count(
    database, tenant, now, tmp_path
):
    path = tmp_path / "wide-line.csv"
    path.write_text(
        "Email,A,B,C,D\n"
        "ok@example.com,1,2,3,4\n"
        "long@example.com,1,2,3,4,5,6,7,8\n"
        'quoted@example.com,"1,2",3,4,5,"6,7",8\n'
    )
    load(database, tenant, path, now)
    hint = " (a value holding the delimiter needs quotes)"
    assert [(r.line_number, r.reason) for r in rejects(database, tenant)] == [
        (3, "the line has 9 fields but the header has 5" + hint),
        (4, "the line has 7 fields but the header has 5" + hint),
    ]


def test_a_mostly_binary_file_is_refused_as_not_text(database, tenant, now, tmp_path):
    path = tmp_path / "photo.csv"
    path.write_bytes(random.Random(8).randbytes(100_000))
    with pytest.raises(IngestError, match="photo.csv: does not look like a text file") as raised:
        load(database, tenant, path, now)
    assert str(raised.value).isprintable()


def test_control_characters_in_headers_are_escaped_in_errors(database, tenant, now, tmp_path):
    path = tmp_path / "escape.csv"
    path.write_bytes(b"Na\x1b[2Jme,Ph\x07one\nAda,123\n")
    with pytest.raises(IngestError) as raised:
        load(database, tenant, path, now)
    message = str(raised.value)
    assert "columns found: Na\\x1b[2Jme, Ph\\x07one" in message and message.isprintable()
    with tenant_transaction(database.app, tenant) as conn:
        error = conn.execute(sa.text("select error from app.upload_batches")).scalar_one()
    assert error == message
    preview = preview_file(path)
    assert "columns found: Na\\x1b[2Jme, Ph\\x07one" in preview.problem


# --- files as editors and spreadsheet programs write them ------------------------------------

#: A CRLF export whose lines 4 and 7 were edited in a program that writes LF, and whose line 6
#: came from an old Mac Excel (CR alone); line 5 has a field too many, line 8 one too few.
MIXED_LINES = (
    "Email,First Name,Company\r\n"
    "ada@example.com,Ada,Engines\r\n"
    "grace@example.com,Grace,Navy\r\n"
    "alan@example.com,Alan,Bletchley\n"
    "extra@example.com,Extra,Co,More\r\n"
    "edsger@example.com,Edsger,Eindhoven\r"
    "barbara@example.com,Barbara,MIT\n"
    "short@example.com\r\n"
    'donald@example.com,Donald,"Stanford\r\nCalifornia"\r\n'
    "ken@example.com,Ken,Bell"
)


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "cp1252"])
def test_lines_ending_in_crlf_lf_and_cr_in_one_file_all_load(
    database, tenant, now, tmp_path, encoding
):
    path = tmp_path / "edited.csv"
    path.write_bytes(MIXED_LINES.encode(encoding))
    result = load(database, tenant, path, now)
    assert (result.total_rows, result.inserted, result.rejected) == (9, 7, 2)
    got = {c.email: c.company for c in contacts(database, tenant)}
    assert got["alan@example.com"] == "Bletchley"  # an LF line between CRLF lines
    assert got["edsger@example.com"] == "Eindhoven"  # a line ending in CR alone
    assert got["donald@example.com"] == "Stanford\nCalifornia"  # a quoted line break
    assert got["ken@example.com"] == "Bell"  # and a last line without an ending
    # A bad row rejects only itself, under the line number a spreadsheet shows.
    too_many = "the line has 4 fields but the header has 3"
    assert [(r.line_number, r.reason) for r in rejects(database, tenant)] == [
        (5, f"{too_many} (a value holding the delimiter needs quotes)"),
        (8, "the line has 1 fields but the header has 3"),
    ]
    [note] = [n for n in result.file_format["notes"] if "lines end" in n]
    assert note == (
        "lines end in different ways (CRLF: 7, CR: 1, LF: 2); each was read as a line end"
    )


def test_a_line_ending_split_between_two_reads_is_one_line_ending(
    database, tenant, now, tmp_path, monkeypatch
):
    """Files are read in chunks: a CRLF whose CR ends one chunk is still one line ending, in
    the survey's count and in the rewritten copy, wherever the chunks fall."""
    from engine.ingest import source

    monkeypatch.setattr(source, "CHUNK_BYTES", 7)
    path = tmp_path / "chunks.csv"
    path.write_bytes(MIXED_LINES.encode())
    result = load(database, tenant, path, now)
    assert (result.total_rows, result.inserted, result.rejected) == (9, 7, 2)
    assert [r.line_number for r in rejects(database, tenant)] == [5, 8]


@pytest.mark.parametrize("delimiter", [";", "\t"], ids=["semicolon", "tab"])
def test_an_excel_sep_line_names_the_delimiter_and_is_no_row(
    database, tenant, now, tmp_path, delimiter
):
    lines = [
        f"sep={delimiter}",
        "E-Mail;Vorname;Firma",
        "ada@example.com;Ada;Lovelace, Byron & Co",
        "zoe@example.com;Zoë;Müller",
    ]
    path = tmp_path / "excel-de.csv"
    text = "\r\n".join(lines[:1] + [line.replace(";", delimiter) for line in lines[1:]])
    path.write_bytes(codecs.BOM_UTF8 + text.encode())
    result = load(database, tenant, path, now)
    assert (result.inserted, result.rejected) == (2, 0)
    assert result.file_format["columns"] == ["E-Mail", "Vorname", "Firma"]
    assert result.file_format["delimiter"] == delimiter
    got = {c.email: (c.first_name, c.company) for c in contacts(database, tenant)}
    assert got == {
        "ada@example.com": ("Ada", "Lovelace, Byron & Co"),
        "zoe@example.com": ("Zoë", "Müller"),
    }
    assert (
        f"the first line (sep={delimiter}) names the delimiter; it is not read as data"
        in result.file_format["notes"]
    )


def test_a_sep_line_naming_a_delimiter_no_line_holds_gives_way_to_the_lines_own(
    database, tenant, now, tmp_path
):
    """A file saved again with commas that kept its `sep=;` line: read as one column, every
    row was rejected as an address with commas in it."""
    path = tmp_path / "resaved.csv"
    path.write_text("sep=;\nEmail,Name\nada@example.com,Ada\nzoe@example.com,Zoë\n")
    result = load(database, tenant, path, now)
    assert (result.inserted, result.rejected) == (2, 0)
    assert result.file_format["columns"] == ["Email", "Name"]
    assert result.file_format["notes"] == [
        "the first line (sep=;) names a delimiter no line below it holds; the file was read "
        "with ',' and the line is not data"
    ]


def test_a_title_line_holding_a_delimiter_is_not_taken_for_the_header(
    database, tenant, now, tmp_path
):
    rows = "".join(f"p{i}@example.com;P{i};Co\r\n" for i in range(30))
    path = tmp_path / "report.csv"
    path.write_text("Contacts, November 2026\r\n\r\nEmail;First Name;Company\r\n" + rows)
    result = load(database, tenant, path, now)
    assert (result.inserted, result.rejected) == (30, 0)
    assert result.file_format["skipped_lines"] == 2
    assert result.file_format["columns"] == ["Email", "First Name", "Company"]
    assert "skipped 2 line(s) above the header" in result.file_format["notes"]


@pytest.mark.parametrize(
    "parser_error",
    [
        lambda: duckdb.connect().execute("select * from read_csv('/no/such/file.csv')"),
        lambda: pl.DataFrame({"a": ["x"]}).select(pl.col("a").cast(pl.Int64)),
    ],
    ids=["duckdb", "polars"],
)
def test_a_parsers_error_reaches_the_user_as_a_plain_message_naming_the_file(parser_error):
    from engine.ingest import _as_ingest_error

    with pytest.raises((duckdb.Error, pl.exceptions.PolarsError)) as raised:
        parser_error()
    error = _as_ingest_error(raised.value, "leads.csv")
    assert str(error) == (
        "leads.csv: the file cannot be read as CSV (its quotes, delimiters or line ends do not "
        "fit together); open it in a spreadsheet program, save it as CSV UTF-8 and upload that"
    )
