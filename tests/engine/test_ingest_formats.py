"""Files as they come: every encoding and delimiter, and every way a CSV goes wrong."""

from __future__ import annotations

import codecs

import pytest
import sqlalchemy as sa

from engine.db import tenant_transaction
from engine.ingest import IngestError, ingest_file
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


def test_an_unbalanced_quote_rejects_what_it_swallows_and_nothing_else(
    database, tenant, now, tmp_path
):
    rows = [f"p{i}@example.com,P{i},Co" for i in range(1, 11)]
    rows[3] = 'q@example.com,"Unclosed,Co'  # line 5 opens a quote ...
    rows[6] = 'r@example.com,"Closed, properly",Co'  # ... that the next quote closes
    path = tmp_path / "quotes.csv"
    path.write_text("Email,First Name,Company\n" + "\n".join(rows) + "\n")
    result = load(database, tenant, path, now)
    [reject] = rejects(database, tenant)
    assert reject.line_number == 5 and "unbalanced quote" in reject.reason
    assert "p5@example.com" in reject.raw_row  # the swallowed lines are in the report
    assert result.inserted + result.rejected == result.total_rows
    emails = {c.email for c in contacts(database, tenant)}
    assert {"p1@example.com", "p8@example.com", "p10@example.com"} <= emails


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
