"""`penguin upload` and `penguin uploads`, run as a user runs them: whatever the file holds,
one clear line, never a traceback; batches named by the start of their id, like git's."""

from __future__ import annotations

import os
import random
import uuid

import sqlalchemy as sa

from tests.factories import run_penguin as run
from tests.factories import write_csv


def _batch(database, batch_id: str, file_name: str) -> None:
    """A completed batch with a chosen id (ids are random: prefixes are made, not hoped for)."""
    with database.owner.begin() as conn:
        conn.execute(
            sa.text(
                "insert into app.upload_batches (id, tenant_id, list_name, file_name, "
                "content_sha256, file_size, column_mapping, source, status, created_at) "
                "select cast(:id as uuid), id, 'l', :file_name, :file_name, 1, '{}', 'cli', "
                "'completed', now() "
                "from app.tenants where name = 'default'"
            ),
            {"id": batch_id, "file_name": file_name},
        )


def test_rejects_are_found_by_the_start_of_the_batch_id(env, tmp_path):
    path = write_csv(tmp_path / "leads.csv", [["ok@example.com"], ["broken"]], ["Email"])
    loaded = run(["upload", str(path), "--list", "leads"], env)
    assert loaded.returncode == 0, loaded.stderr
    batch = loaded.stdout.split()[1].rstrip(":")
    for given in (batch[:4], batch[:8], batch[:13], batch.replace("-", "")[:12], batch.upper()):
        found = run(["uploads", "rejects", given], env)
        assert found.returncode == 0, found.stderr
        assert found.stdout.splitlines()[1].startswith("3,email 'broken' is not valid")


def test_an_unknown_or_ambiguous_batch_fails_with_what_to_do(database, env):
    _batch(database, "abcd1234-0000-4000-8000-000000000001", "first.csv")
    _batch(database, "abcd5678-0000-4000-8000-000000000002", "second.csv")

    ambiguous = run(["uploads", "rejects", "abcd"], env)
    assert ambiguous.returncode == 2 and ambiguous.stdout == ""
    assert "'abcd' is the start of more than one batch id; give more of it" in ambiguous.stderr
    assert "abcd1234-0000-4000-8000-000000000001" in ambiguous.stderr
    assert "abcd5678-0000-4000-8000-000000000002" in ambiguous.stderr
    assert "second.csv" in ambiguous.stderr

    assert run(["uploads", "rejects", "abcd5"], env).returncode == 0

    unknown = run(["uploads", "rejects", str(uuid.UUID(int=7))], env)
    assert unknown.returncode == 2 and unknown.stdout == ""
    assert "tenant default has no upload batch '00000000-0000-0000-0000-000000000007'" in (
        unknown.stderr
    )
    short = run(["uploads", "rejects", "abc"], env)
    assert short.returncode == 2 and "give at least 4 hex digits" in short.stderr
    wild = run(["uploads", "rejects", "ab%_"], env)
    assert wild.returncode == 2 and "'ab%_' is not a batch id" in wild.stderr


def test_a_file_of_binary_garbage_fails_in_one_line(env, tmp_path):
    path = tmp_path / "photo.csv"
    path.write_bytes(random.Random(3).randbytes(50_000))
    result = run(["upload", str(path), "--list", "leads"], env)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: photo.csv: does not look like a text file (its start is mostly control "
        "characters); upload the contacts as a CSV text file"
    )


def test_user_text_that_looks_like_markup_or_escapes_is_shown_as_it_is(env, tmp_path):
    path = tmp_path / "leads[red].csv"
    path.write_bytes(b"[/],\x1b[31mName\nAda,Lovelace\n")
    result = run(["upload", str(path), "--list", "leads"], env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "leads[red].csv: no column looks like an email address" in result.stderr
    assert "columns found: [/], \\x1b[31mName" in result.stderr
    assert "\x1b" not in result.stderr

    good = tmp_path / "leads[bold].csv"
    good.write_text("Email\nada@example.com\n")
    loaded = run(["upload", str(good), "--list", "[bold]vip"], env)
    assert loaded.returncode == 0, loaded.stderr
    assert "leads[bold].csv → list '[bold]vip'" in loaded.stdout
    listed = run(["uploads", "list"], env)
    assert "leads[bold].csv" in listed.stdout and "[bold]vip" in listed.stdout


def test_a_folder_or_a_fifo_is_refused_as_not_a_file_at_once(env, tmp_path):
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    for path, what in ((tmp_path, "a folder"), (fifo, "a named pipe (FIFO)")):
        result = run(["upload", str(path), "--list", "leads"], env, timeout=60)
        assert result.returncode == 1
        assert result.stderr.strip() == (
            f"error: {path.name}: is {what}, not a file; give the path of a regular file"
        )


def test_rejects_written_to_a_folder_fail_in_one_line(env, tmp_path):
    path = write_csv(tmp_path / "leads.csv", [["ok@example.com"], ["broken"]], ["Email"])
    batch = run(["upload", str(path), "--list", "leads"], env).stdout.split()[1].rstrip(":")
    result = run(["uploads", "rejects", batch, "-o", str(tmp_path)], env)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: cannot write {tmp_path}: it is a folder; give a file name, e.g. "
        f"{tmp_path}/rejects.csv"
    )
