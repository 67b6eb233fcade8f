"""The upload page, run for real (AppTest): it queues files in the inbox, with the mapping
chosen on the page, and follows their batches through the marts dbt built."""

from __future__ import annotations

import csv
import io
import json
import random
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from streamlit.testing.v1 import AppTest

from engine import inbox
from engine.config import PROJECT_ROOT
from engine.db import tenant_transaction
from engine.inbox import process_inbox
from engine.tenants import tenant_id
from tests.factories import dbt

APP = str(PROJECT_ROOT / "dashboards" / "app.py")
PAGE = "pages/uploads.py"

GERMAN = (
    "Vorname;Nachname;Kontakt;Firma\r\n"
    "Jörg;Müller;Joerg@Example.com;Acme GmbH\r\n"
    "Anna;Schmidt;anna@example.org;Beta AG\r\n"
    "=2+3;Row;not-an-address;Gamma\r\n"
).encode("cp1252")


@pytest.fixture
def page_env(use_database, database):
    dbt(database, "run", "--select", "+dim_tenants", "+fct_upload_rejects")
    return use_database(database)


def open_page() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.switch_page(PAGE).run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Upload contacts"
    return at


def pick_file(at: AppTest, name: str, content: bytes) -> AppTest:
    at.file_uploader[0].set_value((name, content, "text/csv")).run()
    assert not at.exception, at.exception
    return at


def mapping_picker(at: AppTest, column: str):
    return next(s for s in at.selectbox if s.label == column)


def upload_button(at: AppTest):
    return next(b for b in at.button if b.label == "Upload")


def test_a_file_is_previewed_queued_with_its_mapping_and_followed_to_completion(page_env):
    database = page_env
    uploads = database.settings.uploads
    now = datetime.now(UTC)  # the page shows the batches of the sidebar's period, up to today
    at = open_page()
    assert "no uploads between" in at.info[0].value
    at.text_input[0].set_value("Messe 2026").run()
    pick_file(at, "messe.csv", GERMAN)

    # The preview: how the file was read, its rows, and the mapping found.
    assert any(
        "Read as Windows-1252, semicolon-delimited, with a header row" in c.value
        for c in at.caption
    )
    preview = at.dataframe[0].value
    assert list(preview.columns) == ["Vorname", "Nachname", "Kontakt", "Firma"]
    assert preview["Vorname"].tolist() == ["Jörg", "Anna", "=2+3"]
    assert mapping_picker(at, "Kontakt").value == "email"  # by content: no header says so
    assert mapping_picker(at, "Vorname").value == "first_name"
    assert mapping_picker(at, "Firma").value == "company"

    # Keep "Firma" as an attribute instead, and upload.
    mapping_picker(at, "Firma").set_value("(keep as attribute)").run()
    upload_button(at).click().run()
    assert not at.exception, at.exception
    assert "messe.csv is queued for list 'Messe 2026'" in at.success[0].value
    queued = uploads / "inbox" / "default" / "Messe 2026" / "messe.csv"
    assert queued.read_bytes() == GERMAN
    sidecar = json.loads(queued.with_name(".messe.csv.upload.json").read_text())
    assert sidecar == {"mapping": {"Firma": "attribute"}, "source": "dashboard"}
    assert any("queued" in md.value and "messe.csv" in md.value for md in at.markdown)

    # What the sensor's run does with it, then the page shows the completed batch.
    [outcome] = process_inbox(database.app, uploads, now)
    assert outcome.error is None
    at.run()
    assert not at.exception, at.exception
    batches = at.dataframe[1].value
    assert batches["upload_status"].tolist() == ["✅ completed"]
    assert any(c.value.startswith("Data as of ") for c in at.caption), at.caption
    assert batches["upload_source"].tolist() == ["dashboard"]
    assert batches[["total_rows", "inserted_count", "rejected_count"]].values.tolist() == [
        [3, 2, 1]
    ]
    with tenant_transaction(database.app, tenant_id(database.app, "default")) as conn:
        company, attributes = conn.execute(
            sa.text(
                "select company, attributes from app.contacts "
                "where lower(email) = 'joerg@example.com'"
            )
        ).one()
    assert company is None and attributes["Firma"] == "Acme GmbH"

    # The rejects: shown, and offered for download.
    rejects = at.dataframe[2].value
    assert rejects["line_number"].tolist() == [4]
    assert "not-an-address" in rejects["raw_row"][0]
    [download] = at.get("download_button")
    assert download.label == "Download all 1 rejected rows (CSV)"


def test_the_reject_download_neutralizes_formulas(page_env):
    from dashboards import data

    database = page_env
    at = open_page()
    at.text_input[0].set_value("l").run()
    pick_file(at, "messe.csv", GERMAN)
    upload_button(at).click().run()
    now = datetime.now(UTC)
    process_inbox(database.app, database.settings.uploads, now)
    [batch_id] = data.upload_batches("default", now.date(), now.date())["upload_batch_id"].to_list()
    rows = list(csv.reader(io.StringIO(data.upload_rejects_csv("default", batch_id))))
    assert rows[0] == ["line_number", "reason", "raw_row"]
    line, reason, raw = rows[1]
    assert line == "4" and "not-an-address" in reason
    # The line as uploaded starts with "=": a spreadsheet would run it, so it gets a quote.
    assert raw == "'=2+3;Row;not-an-address;Gamma"


def test_a_file_without_an_address_column_waits_for_one_to_be_chosen(page_env):
    at = open_page()
    at.text_input[0].set_value("l").run()
    pick_file(at, "people.csv", b"Name,Reach me at\nAda,ada at example\nBob,bob@example.com\n")
    assert "no column looks like an email address" in at.warning[0].value
    assert upload_button(at).disabled
    mapping_picker(at, "Reach me at").set_value("email").run()
    assert not at.warning
    assert not upload_button(at).disabled


def test_two_columns_on_one_field_are_refused_before_upload(page_env):
    at = open_page()
    at.text_input[0].set_value("l").run()
    pick_file(at, "two.csv", b"Email,Backup\na@example.com,b@example.com\n")
    mapping_picker(at, "Backup").set_value("email").run()
    assert "more than one column is mapped to email" in at.warning[0].value
    assert upload_button(at).disabled


def test_a_file_that_is_no_csv_is_named_as_such(page_env):
    at = open_page()
    pick_file(at, "report.csv", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n")
    assert "This file cannot be uploaded" in at.error[0].value
    assert "PDF" in at.error[0].value
    assert not [b for b in at.button if b.label == "Upload"]


def test_a_list_name_that_cannot_be_a_folder_is_refused(page_env):
    at = open_page()
    at.text_input[0].set_value("a/b").run()
    pick_file(at, "ok.csv", b"Email\na@example.com\n")
    upload_button(at).click().run()
    assert "list name 'a/b' cannot be used for an inbox folder" in at.error[0].value
    assert not (page_env.settings.uploads / "inbox").exists() or not any(
        p.is_file() for p in (page_env.settings.uploads / "inbox").rglob("*")
    )


def test_the_page_explains_missing_marts(use_database, database):
    use_database(database)
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.switch_page(PAGE).run()
    assert not at.exception, at.exception
    assert "analytics marts have not been built yet" in at.info[0].value


def test_a_file_name_holding_a_path_is_queued_inside_the_inbox(page_env):
    uploads = page_env.settings.uploads
    at = open_page()
    at.text_input[0].set_value("l").run()
    pick_file(at, "../../../evil.csv", b"Email\na@example.com\n")
    upload_button(at).click().run()
    assert not at.exception, at.exception
    assert "(evil.csv)" in at.success[0].value
    assert (uploads / "inbox" / "default" / "l" / "evil.csv").read_bytes() == (
        b"Email\na@example.com\n"
    )
    assert [p for p in uploads.parent.rglob("evil.csv")] == [
        uploads / "inbox" / "default" / "l" / "evil.csv"
    ]


def test_a_binary_file_is_refused_in_one_line(page_env):
    at = open_page()
    pick_file(at, "photo.csv", random.Random(5).randbytes(20_000))
    assert not at.exception, at.exception
    assert "photo.csv: does not look like a text file" in at.error[0].value


def test_a_waiting_file_with_broken_instructions_does_not_break_the_page(page_env, tmp_path):
    uploads = page_env.settings.uploads
    source = tmp_path / "a.csv"
    source.write_text("Email\na@example.com\n")
    queued = inbox.drop(uploads, source, "default", "l")
    queued.with_name(".a.csv.upload.json").write_text("{not json")
    at = open_page()
    assert not at.exception, at.exception
    assert any("a.csv" in md.value and "will fail" in md.value for md in at.markdown)


def test_the_batches_follow_the_sidebars_tenant_and_period(use_database, database, tmp_path):
    from datetime import timedelta

    from engine.tenants import create_tenant

    use_database(database)
    create_tenant(database.owner, "beta")
    uploads = database.settings.uploads
    now = datetime.now(UTC)
    for tenant, name, when in [
        ("beta", "beta-old.csv", now - timedelta(days=10)),
        ("beta", "beta-new.csv", now),
        ("default", "default-new.csv", now),
    ]:
        path = tmp_path / name
        path.write_text(f"email\n{path.stem}@example.com\n")  # not a repeat of a file
        inbox.drop(uploads, path, tenant, "leads")
        process_inbox(database.app, uploads, when)
    # tenant_daily too: with two tenants, the picker opens on the one that sent last
    dbt(database, "run", "--select", "+dim_tenants", "+fct_upload_rejects", "+tenant_daily")

    def files(**query: str) -> list[str]:
        at = AppTest.from_file(str(PROJECT_ROOT / "dashboards" / "pages" / "uploads.py"))
        for key, value in query.items():
            at.query_params[key] = value
        at.run(timeout=60)
        assert not at.exception, at.exception
        assert at.sidebar.selectbox(key="tenant").value == query.get("tenant", "default")
        batches = at.dataframe[0]
        assert batches.proto.placeholder == "—"  # no error: a dash, not "None"
        return sorted(batches.value["file_name"])

    assert files(tenant="beta") == ["beta-new.csv", "beta-old.csv"]
    assert files(tenant="beta", period="7d") == ["beta-new.csv"]
    assert files(tenant="default") == ["default-new.csv"]
