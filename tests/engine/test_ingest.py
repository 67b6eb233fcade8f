"""The thin ingestion slice: a CSV becomes contacts in a list, with rejects recorded."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from engine.db import tenant_transaction
from engine.ingest import IngestError, ingest_csv
from engine.tenants import tenant_id
from tests.factories import write_csv


@pytest.fixture
def default_tenant(database):
    return tenant_id(database.app, "default")


def _contacts(database, tenant):
    with tenant_transaction(database.app, tenant) as conn:
        return conn.execute(
            sa.text(
                "select email, first_name, company, attributes from app.contacts order by email"
            )
        ).all()


def test_rows_become_contacts_in_the_named_list(database, default_tenant, now, tmp_path):
    path = write_csv(
        tmp_path / "crm.csv",
        [
            ["ada@example.com", "Ada", "Lovelace", "Engines", "gold"],
            ["grace@example.com", "Grace", "Hopper", "Navy", "silver"],
        ],
    )
    result = ingest_csv(database.app, default_tenant, path, "vip", now)
    assert (result.total_rows, result.inserted, result.rejected) == (2, 2, 0)
    rows = _contacts(database, default_tenant)
    assert [(r.email, r.first_name, r.company) for r in rows] == [
        ("ada@example.com", "Ada", "Engines"),
        ("grace@example.com", "Grace", "Navy"),
    ]
    assert rows[0].attributes == {"Plan": "gold"}  # unmapped columns are kept
    with tenant_transaction(database.app, default_tenant) as conn:
        members = conn.execute(
            sa.text(
                "select count(*) from app.contact_list_members m join app.contact_lists l "
                "on l.id = m.list_id where l.name = 'vip'"
            )
        ).scalar()
        batch = conn.execute(sa.text("select status, inserted_count from app.upload_batches")).one()
    assert members == 2
    assert batch == ("completed", 2)


def test_addresses_differing_only_in_case_are_one_contact(database, default_tenant, now, tmp_path):
    first = write_csv(
        tmp_path / "a.csv",
        [["John@Example.com", "John", "", "", ""], ["john@example.com", "Johnny", "", "", ""]],
    )
    result = ingest_csv(database.app, default_tenant, first, "l", now)
    assert (result.inserted, result.duplicates) == (1, 1)
    second = write_csv(tmp_path / "b.csv", [["JOHN@EXAMPLE.COM", "", "", "Acme", ""]])
    again = ingest_csv(database.app, default_tenant, second, "l", now)
    assert (again.inserted, again.updated) == (0, 1)
    rows = _contacts(database, default_tenant)
    assert len(rows) == 1
    assert (rows[0].first_name, rows[0].company) == ("Johnny", "Acme")  # empty cells keep values


def test_invalid_addresses_are_rejected_with_line_numbers(database, default_tenant, now, tmp_path):
    path = write_csv(
        tmp_path / "mixed.csv",
        [
            ["ok@example.com", "", "", "", ""],
            ["not an address", "", "", "", ""],
            ["", "Nameless", "", "", ""],
        ],
    )
    result = ingest_csv(database.app, default_tenant, path, "l", now)
    assert (result.inserted, result.rejected) == (1, 2)
    with tenant_transaction(database.app, default_tenant) as conn:
        rejects = conn.execute(
            sa.text("select line_number, reason from app.upload_rejects order by line_number")
        ).all()
    assert [r.line_number for r in rejects] == [3, 4]
    assert "not an address" in rejects[0].reason and "empty" in rejects[1].reason


def test_file_without_an_email_column_fails_and_names_the_columns(
    database, default_tenant, now, tmp_path
):
    path = write_csv(tmp_path / "names.csv", [["Ada", "Lovelace"]], header=["First", "Last"])
    with pytest.raises(
        IngestError, match="no column looks like an email address; columns found: First, Last"
    ):
        ingest_csv(database.app, default_tenant, path, "l", now)
    with tenant_transaction(database.app, default_tenant) as conn:
        batch = conn.execute(sa.text("select status, error from app.upload_batches")).one()
        assert conn.execute(sa.text("select count(*) from app.contacts")).scalar() == 0
    assert batch.status == "failed" and "no column looks like an email" in batch.error


def test_explicit_mapping_overrides_header_guessing(database, default_tenant, now, tmp_path):
    path = write_csv(tmp_path / "odd.csv", [["x@example.com", "Org"]], header=["Contact", "Firm"])
    ingest_csv(
        database.app,
        default_tenant,
        path,
        "l",
        now,
        mapping={"Contact": "email", "Firm": "company"},
    )
    assert [(r.email, r.company) for r in _contacts(database, default_tenant)] == [
        ("x@example.com", "Org")
    ]


def test_mapping_to_an_unknown_column_is_refused(database, default_tenant, now, tmp_path):
    path = write_csv(tmp_path / "odd.csv", [["x@example.com"]], header=["Contact"])
    with pytest.raises(IngestError, match="mapping names column 'Mail', which the file does not"):
        ingest_csv(database.app, default_tenant, path, "l", now, mapping={"Mail": "email"})


def test_headers_named_like_internal_columns_are_ordinary_attributes(
    database, default_tenant, now, tmp_path
):
    path = write_csv(
        tmp_path / "odd.csv",
        [["ok@example.com", "7", "hello", "x"], ["broken", "8", "hi", "y"]],
        header=["Email", "line_number", "reason", "raw_data"],
    )
    result = ingest_csv(database.app, default_tenant, path, "l", now)
    assert (result.inserted, result.rejected) == (1, 1)
    [contact] = _contacts(database, default_tenant)
    assert contact.attributes == {"line_number": "7", "reason": "hello", "raw_data": "x"}
    with tenant_transaction(database.app, default_tenant) as conn:
        reject = conn.execute(sa.text("select line_number, reason from app.upload_rejects")).one()
    assert reject.line_number == 3 and "'broken' is not valid" in reject.reason


def test_a_file_that_fails_is_moved_aside_with_its_reason_and_the_rest_land(
    database, now, tmp_path
):
    from engine.inbox import drop, process_inbox

    uploads = database.settings.uploads
    drop(uploads, write_csv(tmp_path / "a-bad.csv", [["x"]], header=["Name"]), "default", "l")
    drop(
        uploads,
        write_csv(tmp_path / "b-good.csv", [["g@example.com", "", "", "", ""]]),
        "default",
        "l",
    )
    drop(
        uploads, write_csv(tmp_path / "c.csv", [["h@example.com"]], header=["Email"]), "nobody", "l"
    )
    outcomes = {o.file.path.name: o for o in process_inbox(database.app, uploads, now)}
    assert outcomes["b-good.csv"].result.inserted == 1
    assert "no column looks like an email address" in outcomes["a-bad.csv"].error
    assert "no tenant named 'nobody'" in outcomes["c.csv"].error
    failed = outcomes["a-bad.csv"].moved_to
    assert failed.parent == uploads / "failed" / "default" / "l"
    assert "no column looks like" in failed.with_name(failed.name + ".error.txt").read_text()
    assert list((uploads / "inbox").rglob("*.csv")) == []
