"""The uploads inbox: files dropped in folders per tenant and list."""

from __future__ import annotations

import os

import pytest

from engine.inbox import drop, inbox_path, pending_files, process_inbox
from engine.ingest import IngestError
from tests.factories import write_csv


def test_a_failed_file_is_moved_aside_with_its_reason_and_the_rest_land(database, now, tmp_path):
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
    assert [p for p in (uploads / "inbox").rglob("*") if p.is_file()] == []


def test_a_mapping_dropped_with_the_file_is_used(database, now, tmp_path):
    uploads = database.settings.uploads
    source = write_csv(tmp_path / "odd.csv", [["x@example.com"]], header=["Contact"])
    drop(uploads, source, "default", "l", mapping={"Contact": "email"}, via="dashboard")
    [outcome] = process_inbox(database.app, uploads, now)
    assert outcome.error is None and outcome.result.inserted == 1
    assert outcome.result.column_mapping == {"Contact": "email"}


def test_files_still_being_written_wait(database, tmp_path):
    uploads = database.settings.uploads
    path = drop(uploads, write_csv(tmp_path / "a.csv", [["a@example.com"]], ["Email"]), "t", "l")
    fresh = path.stat().st_mtime
    assert list(pending_files(uploads, now_timestamp=fresh + 0.5)) == []
    assert [f.path for f in pending_files(uploads, now_timestamp=fresh + 5)] == [path]
    os.utime(path, (fresh - 10, fresh - 10))
    assert [f.path for f in pending_files(uploads, now_timestamp=fresh)] == [path]


def test_a_second_file_of_the_same_name_does_not_overwrite_the_first(database, tmp_path):
    uploads = database.settings.uploads
    source = write_csv(tmp_path / "a.csv", [["a@example.com"]], ["Email"])
    first = drop(uploads, source, "t", "l")
    second = drop(uploads, source, "t", "l")
    assert first.name == "a.csv" and second.name == "a-2.csv"


@pytest.mark.parametrize(
    ("tenant", "list_name", "message"),
    [
        ("default", "a/b", "list name 'a/b' cannot be used for an inbox folder"),
        ("default", ".hidden", "list name '.hidden' cannot be used for an inbox folder"),
        ("default", "  ", "a list name must not be empty"),
        ("Not A Tenant", "l", "tenant name 'Not A Tenant' is not valid"),
        ("default", "é" * 150, r"is too long for an inbox folder \(300 bytes, at most 200;"),
    ],
)
def test_drop_refuses_names_that_cannot_be_inbox_folders(
    database, tmp_path, tenant, list_name, message
):
    source = write_csv(tmp_path / "c.csv", [["h@example.com"]], header=["Email"])
    with pytest.raises(IngestError, match=message):
        drop(database.settings.uploads, source, tenant, list_name)
    assert not inbox_path(database.settings.uploads).exists()


@pytest.mark.parametrize(
    ("name", "landed"),
    [
        ("../../outside.csv", "outside.csv"),
        ("/tmp/absolute.csv", "absolute.csv"),
        ("..\\..\\windows.csv", "windows.csv"),
        ("C:\\Users\\ada\\crm.csv", "crm.csv"),
        ("..", "upload.csv"),
        (".hidden.csv", "hidden.csv"),
        ("bell\x07\x1b[2J.csv", "bell[2J.csv"),
        ("x" * 300 + ".csv", "x" * 146 + ".csv"),
    ],
)
def test_an_uploaded_file_name_lands_inside_its_inbox_folder(database, tmp_path, name, landed):
    uploads = database.settings.uploads
    source = write_csv(tmp_path / "a.csv", [["a@example.com"]], ["Email"])
    target = drop(uploads, source, "default", "l", mapping={"Email": "email"}, name=name)
    folder = inbox_path(uploads) / "default" / "l"
    assert target == folder / landed and target.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in folder.iterdir()) == sorted([landed, f".{landed}.upload.json"])
    assert [p for p in uploads.rglob("*") if p.is_file() and folder not in p.parents] == []


@pytest.mark.parametrize(
    ("instructions", "problem"),
    [
        ("{not json", "is not valid JSON (Expecting property name"),
        ('["a", "b"]', "must be a JSON object, not list"),
        ('{"mapping": {"Contact": 3}}', '"mapping" that is not an object of column names'),
        ('{"mapping": ["Contact", "email"]}', '"mapping" that is not an object of column names'),
        ('{"source": "carrier pigeon"}', "names an unknown source 'carrier pigeon'"),
        (b"\xff\xfe{", "cannot be read"),
    ],
)
def test_broken_instructions_end_only_their_own_file(
    database, now, tmp_path, instructions, problem
):
    uploads = database.settings.uploads
    good = drop(
        uploads, write_csv(tmp_path / "a.csv", [["a@example.com"]], ["Email"]), "default", "l"
    )
    bad = drop(
        uploads, write_csv(tmp_path / "b.csv", [["b@example.com"]], ["Email"]), "default", "l"
    )
    sidecar = bad.with_name(f".{bad.name}.upload.json")
    if isinstance(instructions, bytes):
        sidecar.write_bytes(instructions)
    else:
        sidecar.write_text(instructions)

    waiting = {f.path.name: f for f in pending_files(uploads)}  # the page lists them all
    assert waiting["a.csv"].problem is None and problem in waiting["b.csv"].problem

    outcomes = {o.file.path.name: o for o in process_inbox(database.app, uploads, now)}
    assert outcomes[good.name].result.inserted == 1
    assert outcomes[bad.name].result is None
    moved = outcomes[bad.name].moved_to
    assert moved.parent == uploads / "failed" / "default" / "l"
    error = moved.with_name(moved.name + ".error.txt").read_text()
    assert (
        error.startswith(".b.csv.upload.json, the instructions beside the file,")
        and problem in error
    )
    assert [p for p in inbox_path(uploads).rglob("*") if p.is_file()] == []


def test_a_hand_copied_file_whose_name_is_not_utf8_is_loaded_and_moved_aside(
    database, now, tmp_path
):
    """A name made on another system (Latin-1 bytes from a zip): the content is fine, so it
    loads, recorded under a readable name; it never stops the inbox with an encoding error."""
    uploads = database.settings.uploads
    folder = inbox_path(uploads) / "default" / "l"
    folder.mkdir(parents=True)
    (folder / os.fsdecode(b"caf\xe9.csv")).write_bytes(b"Email\nc@example.com\n")
    write_csv(folder / "later.csv", [["d@example.com"]], ["Email"])

    outcomes = process_inbox(database.app, uploads, now)
    assert [(o.error, o.result.inserted) for o in outcomes] == [(None, 1), (None, 1)]
    assert outcomes[0].result.file_name == "caf\ufffd.csv"
    assert outcomes[0].moved_to.parent == uploads / "processed" / "default" / "l"
    assert [p for p in inbox_path(uploads).rglob("*") if p.is_file()] == []


def test_a_hand_copied_file_with_a_name_too_long_to_stamp_is_loaded_and_moved_aside(
    database, now, tmp_path
):
    """255 bytes is a valid name, but not with the timestamp in front or a sidecar beside it."""
    uploads = database.settings.uploads
    folder = inbox_path(uploads) / "default" / "l"
    long = "x" * 251 + ".csv"
    write_csv(folder / long, [["a@example.com"]], ["Email"])
    write_csv(folder / "earlier.csv", [["b@example.com"]], ["Email"])

    outcomes = process_inbox(database.app, uploads, now)
    assert [(o.error, o.result.inserted) for o in outcomes] == [(None, 1), (None, 1)]
    assert outcomes[1].result.file_name == long
    assert outcomes[1].moved_to.parent == uploads / "processed" / "default" / "l"
    assert [p for p in inbox_path(uploads).rglob("*") if p.is_file()] == []


def test_a_folder_name_that_is_not_utf8_fails_only_its_own_file(database, now, tmp_path):
    uploads = database.settings.uploads
    odd = inbox_path(uploads) / "default" / os.fsdecode(b"list-\xe9")
    write_csv(odd / "a.csv", [["a@example.com"]], ["Email"])
    write_csv(inbox_path(uploads) / "default" / "l" / "b.csv", [["b@example.com"]], ["Email"])

    outcomes = {o.file.path.name: o for o in process_inbox(database.app, uploads, now)}
    assert outcomes["b.csv"].result.inserted == 1
    assert outcomes["a.csv"].result is None
    assert "not valid UTF-8" in outcomes["a.csv"].error
    moved = outcomes["a.csv"].moved_to
    assert "not valid UTF-8" in moved.with_name(moved.name + ".error.txt").read_text()


@pytest.mark.timeout(60)  # a FIFO opened for reading would block: fail, not hang
def test_only_regular_files_inside_the_inbox_are_taken(database, now, tmp_path):
    """A symbolic link is not followed (to a file outside or inside the inbox), a FIFO is not
    opened (it would block the run forever), a folder linked in is not entered: each entry
    that is not a regular file moves to failed/ saying why, and its target is untouched."""
    uploads = database.settings.uploads
    secret = write_csv(tmp_path / "secret.csv", [["secret@example.com"]], ["Email"])
    folder = inbox_path(uploads) / "default" / "l"
    good = drop(
        uploads, write_csv(tmp_path / "a.csv", [["a@example.com"]], ["Email"]), "default", "l"
    )
    (folder / "link.csv").symlink_to(secret)
    os.mkfifo(folder / "pipe.csv")
    outside = tmp_path / "outside"
    (outside / "l").mkdir(parents=True)
    write_csv(outside / "l" / "b.csv", [["b@example.com"]], ["Email"])
    (inbox_path(uploads) / "linked-tenant").symlink_to(outside)

    outcomes = {o.file.path.name: o for o in process_inbox(database.app, uploads, now)}

    assert set(outcomes) == {good.name, "link.csv", "pipe.csv"}
    assert outcomes[good.name].result.inserted == 1
    assert outcomes["link.csv"].error == (
        "it is a symbolic link; the inbox takes only files: copy the file itself in"
    )
    assert outcomes["pipe.csv"].error == (
        "it is a named pipe (FIFO), not a file; the inbox takes only regular files"
    )
    assert outcomes["link.csv"].moved_to.is_symlink() and secret.is_file()
    assert (outside / "l" / "b.csv").is_file()  # the linked folder was not entered
    with database.owner.connect() as conn:
        assert conn.exec_driver_sql("select count(*) from app.upload_batches").scalar() == 1
