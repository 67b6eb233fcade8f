"""CSV uploads: contacts, lists, deduplication, rejects and the batch lifecycle."""

from __future__ import annotations

import csv
import io
import os
import threading
import time

import polars as pl
import pytest
import sqlalchemy as sa

from engine.db import tenant_transaction
from engine.ingest import IngestError, ingest_file, parse_mapping, preview_file, source
from engine.ingest.rejects import KEPT_REJECTS, rejects_csv, safe_csv
from engine.tenants import tenant_id
from tests.factories import people, write_csv


@pytest.fixture
def tenant(database):
    return tenant_id(database.app, "default")


def query(database, tenant, sql, **params):
    with tenant_transaction(database.app, tenant) as conn:
        return conn.execute(sa.text(sql), params).all()


def contacts(database, tenant):
    return query(
        database,
        tenant,
        "select email, first_name, last_name, full_name, company, status, is_role_address, "
        "attributes, raw_data from app.contacts order by lower(email)",
    )


def batches(database, tenant):
    return query(database, tenant, "select * from app.upload_batches order by created_at, id")


def rejects(database, tenant):
    return query(
        database, tenant, "select line_number, reason, raw_row from app.upload_rejects order by 1"
    )


def test_rows_become_contacts_in_the_named_list(database, tenant, now, tmp_path):
    path = write_csv(
        tmp_path / "crm.csv",
        [
            ["ada@example.com", "Ada", "Lovelace", "Engines", "gold"],
            ["grace@example.com", "Grace", "Hopper", "Navy", "silver"],
        ],
    )
    result = ingest_file(database.app, tenant, path, "vip", now)
    assert result.counts() == {
        "total": 2,
        "inserted": 2,
        "updated": 0,
        "unchanged": 0,
        "duplicates": 0,
        "rejected": 0,
        "suppressed": 0,
        "role_addresses": 0,
    }
    ada, grace = contacts(database, tenant)
    assert (ada.email, ada.first_name, ada.full_name, ada.company) == (
        "ada@example.com",
        "Ada",
        "Ada Lovelace",
        "Engines",
    )
    assert ada.attributes == {"Plan": "gold"}  # unmapped columns are kept
    assert ada.raw_data["Email"] == "ada@example.com" and ada.raw_data["Plan"] == "gold"
    members = query(
        database,
        tenant,
        "select count(*) from app.contact_list_members m join app.contact_lists l "
        "on l.id = m.list_id where l.name = 'vip'",
    )
    assert members[0][0] == 2
    [batch] = batches(database, tenant)
    assert (batch.status, batch.inserted_count, batch.list_id) == (
        "completed",
        2,
        result.list_id,
    )
    assert batch.column_mapping == {
        "Email": "email",
        "First Name": "first_name",
        "Last Name": "last_name",
        "Company": "company",
    }
    assert batch.file_format["delimiter"] == "," and batch.file_format["encoding"] == "utf-8"


def test_addresses_differing_only_in_case_are_one_contact_with_fields_merged(
    database, tenant, now, tmp_path
):
    first = write_csv(
        tmp_path / "a.csv",
        [
            ["John@Example.com", "John", "", "Initech", "a"],
            ["john@example.com", "Johnny", "", "", ""],
        ],
    )
    result = ingest_file(database.app, tenant, first, "l", now)
    assert (result.inserted, result.duplicates) == (1, 1)
    second = write_csv(tmp_path / "b.csv", [["JOHN@EXAMPLE.COM", "", "Smith", "Acme", ""]])
    again = ingest_file(database.app, tenant, second, "l", now)
    assert (again.inserted, again.updated) == (0, 1)
    [john] = contacts(database, tenant)
    # later lines win, empty cells keep what was there
    assert (john.first_name, john.last_name, john.company) == ("Johnny", "Smith", "Acme")
    assert john.attributes == {"Plan": "a"}


def test_an_address_keeps_its_first_spelling_whatever_case_later_lines_use(
    database, tenant, now, tmp_path
):
    path = write_csv(
        tmp_path / "a.csv",
        [
            ["anna.0@prospects.example", "Anna", "", "", ""],
            ["ANNA.0@Prospects.example", "", "Ng", "", ""],
        ],
    )
    result = ingest_file(database.app, tenant, path, "l", now)
    assert (result.inserted, result.duplicates) == (1, 1)
    [anna] = contacts(database, tenant)
    # The first line's spelling is the one mailed; later lines still merge their fields.
    assert (anna.email, anna.first_name, anna.last_name) == (
        "anna.0@prospects.example",
        "Anna",
        "Ng",
    )

    # An existing contact keeps its spelling too, whatever the next file writes.
    again = write_csv(tmp_path / "b.csv", [["Anna.0@PROSPECTS.example", "", "", "Acme", ""]])
    assert ingest_file(database.app, tenant, again, "l", now).updated == 1
    [anna] = contacts(database, tenant)
    assert (anna.email, anna.company) == ("anna.0@prospects.example", "Acme")


def test_invalid_addresses_are_rejected_with_their_line_and_reason(database, tenant, now, tmp_path):
    path = write_csv(
        tmp_path / "mixed.csv",
        [
            ["ok@example.com", "", "", "", ""],
            ["not an address", "", "", "", ""],
            ["", "Nameless", "", "", ""],
            ["two@@example.com", "", "", "", ""],
            ["someone@example.test", "", "", "", ""],
        ],
    )
    result = ingest_file(database.app, tenant, path, "l", now)
    assert (result.inserted, result.rejected, result.total_rows) == (1, 4, 5)
    found = rejects(database, tenant)
    assert [r.line_number for r in found] == [3, 4, 5, 6]
    assert "'not an address' is not valid" in found[0].reason
    assert "no email address" in found[1].reason
    assert "'two@@example.com' is not valid" in found[2].reason
    assert "special-use or reserved name" in found[3].reason
    assert found[1].raw_row == ",Nameless,,,"


def test_addresses_in_name_and_mailto_forms_are_accepted(database, tenant, now, tmp_path):
    path = write_csv(
        tmp_path / "forms.csv",
        [
            ["Ada Lovelace <ada@example.com>"],
            ["mailto:grace@example.com"],
            [" bob@EXAMPLE.com\u00a0"],
        ],
        header=["Email"],
    )
    ingest_file(database.app, tenant, path, "l", now)
    assert [c.email for c in contacts(database, tenant)] == [
        "ada@example.com",
        "bob@example.com",
        "grace@example.com",
    ]


def test_role_addresses_are_flagged_not_rejected(database, tenant, now, tmp_path):
    path = write_csv(
        tmp_path / "roles.csv",
        [["info@acme.example"], ["no-reply@acme.example"], ["jane@acme.example"]],
        header=["Email"],
    )
    result = ingest_file(database.app, tenant, path, "l", now)
    assert (result.inserted, result.role_addresses) == (3, 2)
    flags = {c.email: c.is_role_address for c in contacts(database, tenant)}
    assert flags == {
        "info@acme.example": True,
        "jane@acme.example": False,
        "no-reply@acme.example": True,
    }


def test_suppressed_addresses_stay_suppressed(database, tenant, now, tmp_path):
    ingest_file(
        database.app,
        tenant,
        write_csv(tmp_path / "a.csv", [["gone@example.com"]], ["Email"]),
        "l",
        now,
    )
    with tenant_transaction(database.app, tenant) as conn:
        conn.execute(sa.text("update app.contacts set status = 'bounced'"))
        conn.execute(
            sa.text(
                "insert into app.suppressions (tenant_id, email, reason) "
                "values (app.current_tenant_id(), 'Left@Example.com', 'unsubscribe')"
            )
        )
    path = write_csv(
        tmp_path / "b.csv",
        [["gone@example.com"], ["left@example.com"], ["new@example.com"]],
        ["Email"],
    )
    result = ingest_file(database.app, tenant, path, "l", now)
    assert result.suppressed == 2
    assert {c.email: c.status for c in contacts(database, tenant)} == {
        "gone@example.com": "bounced",
        "left@example.com": "unsubscribed",
        "new@example.com": "active",
    }


def test_file_without_an_email_column_fails_and_names_the_columns(database, tenant, now, tmp_path):
    path = write_csv(tmp_path / "names.csv", [["Ada", "Lovelace"]], header=["First", "Last"])
    with pytest.raises(
        IngestError, match="no column looks like an email address; columns found: First, Last"
    ):
        ingest_file(database.app, tenant, path, "l", now)
    [batch] = batches(database, tenant)
    assert batch.status == "failed" and "no column looks like an email" in batch.error
    assert contacts(database, tenant) == []
    assert query(database, tenant, "select name from app.contact_lists") == []


def test_explicit_mapping_overrides_header_guessing(database, tenant, now, tmp_path):
    path = write_csv(
        tmp_path / "odd.csv",
        [["x@example.com", "Org", "someone@else.example"]],
        header=["Contact", "Firm", "Email"],
    )
    mapping = parse_mapping(["Contact=email", "Firm=company"])
    ingest_file(database.app, tenant, path, "l", now, mapping=mapping)
    [contact] = contacts(database, tenant)
    assert (contact.email, contact.company) == ("x@example.com", "Org")
    assert contact.attributes == {"Email": "someone@else.example"}
    [batch] = batches(database, tenant)
    assert batch.column_mapping == {"Contact": "email", "Firm": "company"}


def test_a_column_mapped_to_attribute_keeps_its_header(database, tenant, now, tmp_path):
    path = write_csv(
        tmp_path / "crm.csv",
        [["x@example.com", "Acme", "CTO"]],
        header=["Email", "Company", "Title"],
    )
    result = ingest_file(database.app, tenant, path, "l", now, mapping={"Company": "attribute"})
    [contact] = contacts(database, tenant)
    assert contact.company is None
    assert contact.attributes == {"Company": "Acme"}
    assert result.column_mapping == {"Email": "email", "Title": "job_title"}


def test_new_contacts_get_time_ordered_ids(database, tenant, now, tmp_path):
    path = write_csv(tmp_path / "a.csv", [["a@example.com"]], header=["Email"])
    ingest_file(database.app, tenant, path, "l", now)
    path = write_csv(tmp_path / "b.csv", [["b@example.com"]], header=["Email"])
    ingest_file(database.app, tenant, path, "l", now)
    ids = [row.id for row in query(database, tenant, "select id from app.contacts order by email")]
    assert [i.version for i in ids] == [7, 7]
    assert ids[0] < ids[1]  # created later, sorts later


def test_preview_reads_like_ingest_and_names_a_missing_address_column(tmp_path):
    path = write_csv(
        tmp_path / "p.csv", [["Ada", "ada at example"]] * 3, header=["Name", "Reach me at"]
    )
    preview = preview_file(path)
    assert preview.mapping == {"Name": "full_name"}
    assert preview.rows.columns == ["Name", "Reach me at"] and preview.rows.height == 3
    assert "no column looks like an email address; columns found: Name, Reach me at" in (
        preview.problem
    )
    fixed = preview_file(path, mapping={"Reach me at": "email", "Name": "attribute"})
    assert (fixed.mapping, fixed.problem) == ({"Reach me at": "email"}, None)


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"Mail": "email"}, "mapping names column 'Mail', which odd.csv does not have"),
        ({"Contact": "emial"}, "'emial' is not a contact field"),
        ({"Contact": "email", "Other": "email"}, "more than one column is mapped to email"),
    ],
)
def test_a_bad_mapping_is_refused_with_what_is_wrong(
    database, tenant, now, tmp_path, mapping, message
):
    path = write_csv(tmp_path / "odd.csv", [["x@example.com", "y"]], header=["Contact", "Other"])
    with pytest.raises(IngestError, match=message):
        ingest_file(database.app, tenant, path, "l", now, mapping=mapping)
    assert contacts(database, tenant) == []


def test_map_option_needs_column_and_field():
    with pytest.raises(IngestError, match="write it as COLUMN=FIELD"):
        parse_mapping(["Email"])


def test_headers_named_like_internal_columns_are_ordinary_attributes(
    database, tenant, now, tmp_path
):
    path = write_csv(
        tmp_path / "odd.csv",
        [["ok@example.com", "7", "hello", "x", "1"], ["broken", "8", "hi", "y", "2"]],
        header=["Email", "line_number", "reason", "raw_data", "__line"],
    )
    result = ingest_file(database.app, tenant, path, "l", now)
    assert (result.inserted, result.rejected) == (1, 1)
    [contact] = contacts(database, tenant)
    assert contact.attributes == {
        "line_number": "7",
        "reason": "hello",
        "raw_data": "x",
        "__line": "1",
    }
    [reject] = rejects(database, tenant)
    assert reject.line_number == 3 and "'broken' is not valid" in reject.reason


def test_the_same_file_twice_is_loaded_once(database, tenant, now, tmp_path):
    path = write_csv(tmp_path / "a.csv", [["a@example.com"], ["b@example.com"]], ["Email"])
    first = ingest_file(database.app, tenant, path, "l", now)
    second = ingest_file(database.app, tenant, path, "l", now)
    assert second.already_loaded and second.batch_id == first.batch_id
    assert len(batches(database, tenant)) == 1
    forced = ingest_file(database.app, tenant, path, "l", now, force=True)
    assert (forced.inserted, forced.updated, forced.unchanged, forced.list_added) == (0, 0, 2, 0)
    members = query(database, tenant, "select count(*) from app.contact_list_members")
    assert members[0][0] == 2  # no duplicate membership
    other = ingest_file(database.app, tenant, path, "other list", now)
    assert not other.already_loaded and other.list_added == 2


def test_a_crash_mid_file_leaves_nothing_and_a_retry_completes_it(
    database, tenant, now, tmp_path, monkeypatch
):
    from engine.ingest import source

    monkeypatch.setattr(source, "BATCH_ROWS", 10)
    rows = [[f"p{i}@example.com", "", "", "", ""] for i in range(35)] + [["bad", "", "", "", ""]]
    path = write_csv(tmp_path / "big.csv", rows)

    def crash_after_first_chunk(stage, done, total):
        if stage == "reading" and done >= 20:
            raise RuntimeError("power cut")

    with pytest.raises(IngestError, match=r"big.csv: .*\(RuntimeError: power cut\)") as raised:
        ingest_file(database.app, tenant, path, "l", now, progress=crash_after_first_chunk)
    assert isinstance(raised.value.__cause__, RuntimeError)  # kept for the logs
    [failed] = batches(database, tenant)
    assert failed.status == "failed" and "power cut" in failed.error
    assert contacts(database, tenant) == [] and rejects(database, tenant) == []
    assert query(database, tenant, "select * from app.contact_lists") == []

    result = ingest_file(database.app, tenant, path, "l", now)
    assert result.batch_id == failed.id and (result.inserted, result.rejected) == (35, 1)
    [done] = batches(database, tenant)
    assert (done.status, done.attempts, done.error) == ("completed", 2, None)


def test_rejects_download_neutralizes_formulas(database, tenant, now, tmp_path):
    path = write_csv(
        tmp_path / "evil.csv",
        [
            ["=1+2", "@SUM(A1)", "", "-2+3", ""],
            ["fine@example.com", "=cmd|' /C calc'!A0", "", "", ""],
        ],
    )
    result = ingest_file(database.app, tenant, path, "l", now)
    assert (result.inserted, result.rejected) == (1, 1)
    [contact] = contacts(database, tenant)
    assert contact.first_name == "=cmd|' /C calc'!A0"  # stored as given, it is data
    with tenant_transaction(database.app, tenant) as conn:
        text = rejects_csv(conn, result.batch_id)
    [header, row] = list(csv.reader(io.StringIO(text)))
    assert header == ["line_number", "reason", "raw_row"]
    assert row[0] == "2" and row[2] == "'=1+2,@SUM(A1),,-2+3,"


@pytest.mark.parametrize("cell", ["=1+2", "+1", "-1", "@A1", "\tx", "\rx"])
def test_every_formula_start_is_neutralized(cell):
    text = safe_csv(pl.DataFrame({"raw_row": [cell, "plain"]}))
    assert list(csv.reader(io.StringIO(text))) == [["raw_row"], ["'" + cell], ["plain"]]


def test_a_list_name_is_required(database, tenant, now, tmp_path):
    path = write_csv(tmp_path / "a.csv", [["a@example.com"]], ["Email"])
    with pytest.raises(IngestError, match="a list name must not be empty"):
        ingest_file(database.app, tenant, path, "  ", now)


def test_two_uploads_of_the_same_file_at_the_same_moment_record_one_completed_batch(
    database, tenant, now, tmp_path
):
    path = write_csv(tmp_path / "a.csv", [["a@example.com"], ["b@example.com"]], ["Email"])
    results: dict[str, object] = {}

    def upload(who: str) -> None:
        try:
            results[who] = ingest_file(database.app, tenant, path, "l", now)
        except Exception as exc:  # reported by the assertion below
            results[who] = exc

    # Hold new batches back until both uploads have checked for one and wait: without turns,
    # both find none and both register their own.
    with database.owner.connect() as owner:
        owner.execute(sa.text("lock table app.upload_batches in share mode"))
        threads = [threading.Thread(target=upload, args=(who,)) for who in ("first", "second")]
        for thread in threads:
            thread.start()
        waiting = sa.text(
            "select count(*) from pg_locks where not granted and database = "
            "(select oid from pg_database where datname = current_database())"
        )
        deadline = time.monotonic() + 30
        while owner.execute(waiting).scalar_one() < 2:  # both blocked, on a lock of some kind
            assert time.monotonic() < deadline, "the uploads never reached the database"
            time.sleep(0.05)
        owner.rollback()  # releases the table
    for thread in threads:
        thread.join(timeout=60)
    outcomes = sorted(results.values(), key=lambda r: getattr(r, "already_loaded", None))
    assert [getattr(r, "already_loaded", r) for r in outcomes] == [False, True]
    assert outcomes[0].batch_id == outcomes[1].batch_id and outcomes[0].inserted == 2
    assert [b.status for b in batches(database, tenant)] == ["completed"]


def test_an_internationalized_domain_is_stored_in_its_sendable_ascii_form(
    database, tenant, now, tmp_path
):
    path = write_csv(
        tmp_path / "idn.csv",
        [["a@bücher.example"], ["A@XN--BCHER-KVA.example"], ["zoë@exämple.com"]],
        header=["Email"],
    )
    result = ingest_file(database.app, tenant, path, "l", now)
    assert (result.inserted, result.duplicates, result.rejected) == (2, 1, 0)
    assert [c.email for c in contacts(database, tenant)] == [
        "a@xn--bcher-kva.example",  # the first line's spelling, its domain in ASCII
        "zoë@xn--exmple-cua.com",
    ]


def test_only_a_batchs_first_rejects_are_kept_and_every_one_is_counted(
    database, tenant, now, tmp_path
):
    bad = [[f"not-an-address-{i}", "x"] for i in range(KEPT_REJECTS + 50)]
    path = write_csv(tmp_path / "leads.csv", [["good@example.com", "G"], *bad], ["Email", "Name"])
    with path.open("a", encoding="utf-8") as handle:
        handle.write('a,b,c,"never closed\n')  # a line the reader itself rejects, last
    result = ingest_file(database.app, tenant, path, "leads", now)
    assert (result.inserted, result.rejected) == (1, KEPT_REJECTS + 51)
    lines = [row.line_number for row in rejects(database, tenant)]
    assert lines == list(range(3, 3 + KEPT_REJECTS))


def test_a_file_over_the_upload_cap_is_refused_before_it_is_read(
    database, tenant, now, tmp_path, monkeypatch
):
    path = write_csv(tmp_path / "leads.csv", people("a", 40))
    monkeypatch.setattr(source, "MAX_UPLOAD_BYTES", 1024)
    with pytest.raises(IngestError) as caught:
        ingest_file(database.app, tenant, path, "leads", now)
    assert str(caught.value) == (
        f"leads.csv: the file is {path.stat().st_size / 1024:.1f} KiB; an upload may be at most "
        "1 KiB; split it into smaller files and upload each"
    )
    assert batches(database, tenant) == []


@pytest.mark.timeout(60)  # a FIFO opened for reading would block: fail, not hang
def test_a_folder_or_a_fifo_is_refused_as_not_a_file(database, tenant, now, tmp_path):
    os.mkfifo(tmp_path / "pipe.csv")
    for path, what in ((tmp_path, "a folder"), (tmp_path / "pipe.csv", "a named pipe (FIFO)")):
        with pytest.raises(IngestError) as caught:
            ingest_file(database.app, tenant, path, "leads", now, file_name="x.csv")
        assert str(caught.value) == f"x.csv: is {what}, not a file; give the path of a regular file"


@pytest.mark.parametrize("rows", [people("plain", 2), [["cut@example.com", "x" * 200_000]]])
def test_a_file_replaced_after_its_survey_is_not_read_in_its_place(
    database, tenant, now, tmp_path, monkeypatch, rows
):
    """Whatever the path names after the survey (here another file with other contacts),
    only the file surveyed is read, or none: the upload fails, saying so."""
    import engine.ingest as ingest

    monkeypatch.setattr(source, "MAX_LINE_BYTES", 100_000)  # the second file is rewritten
    path = write_csv(tmp_path / "crm.csv", rows)
    other = write_csv(tmp_path / "other.csv", people("swapped", 3))
    surveyed = ingest.survey

    def survey_then_replace(*args, **kwargs):
        answer = surveyed(*args, **kwargs)
        other.replace(path)
        return answer

    monkeypatch.setattr(ingest, "survey", survey_then_replace)
    with pytest.raises(IngestError, match="crm.csv: the file was replaced or changed while it"):
        ingest_file(database.app, tenant, path, "vip", now)
    assert contacts(database, tenant) == []
