"""`penguin events import`, `list` and `rejects`, run as a user runs them."""

from __future__ import annotations

import json
import os
import re
from datetime import timedelta
from pathlib import Path

from engine.ingest.rejects import KEPT_REJECTS
from engine.tenants import create_tenant
from tests.engine import provider_samples as samples
from tests.engine.test_provider_events import _sent
from tests.factories import run_penguin as run


def test_an_export_is_imported_reported_and_its_rejects_listed(
    database, smtp_server, env, now, tmp_path
):
    _, ids = _sent(database, smtp_server, now, tmp_path)
    a = sorted(ids)[0]
    at = now + timedelta(hours=1)
    export = tmp_path / "mailgun events.jsonl"
    export.write_text(
        samples.json_lines(
            [samples.mailgun("delivered", ids[a], a, at), samples.mailgun("open", ids[a], a, at)]
        )
        + '{"event-data": {"event": "opened", "timestamp": 1796000000}}\n'
        + json.dumps(
            {
                "event-data": {
                    "event": "opened",
                    "message": {"headers": {"message-id": '=HYPERLINK("http://x")'}},
                    "timestamp": 1796000000,
                }
            }
        )
        + "\n",
        encoding="utf-8",
    )
    args = ["events", "import", str(export), "--format", "mailgun", "--tenant", "acme"]
    done = run(args, env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].endswith(": mailgun events.jsonl (mailgun)")
    assert re.search(r"^events imported +2$", done.stdout, re.M)
    assert re.search(r"^rejected +2$", done.stdout, re.M)
    assert re.search(r"^  delivered +1$", done.stdout, re.M)
    import_id = lines[0].split()[1].rstrip(":")
    assert f"penguin events rejects {import_id} -o rejects.csv" in done.stdout

    again = run(args, env)
    assert again.returncode == 0 and "was already imported" in again.stdout

    listed = run(["events", "list", "--tenant", "acme"], env)
    assert listed.returncode == 0 and import_id[:8] in listed.stdout

    rejected = run(["events", "rejects", import_id[:8], "--tenant", "acme"], env)
    assert rejected.returncode == 0, rejected.stderr
    rows = rejected.stdout.splitlines()
    assert rows[0] == "line_number,reason,raw_row"
    assert rows[1].startswith("3,it names no message")
    assert rows[2].startswith('4,"no message of this tenant has Message-ID <=HYPERLINK(')


def test_a_file_that_cannot_be_imported_is_one_line_and_exit_1(database, env, tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    failed = run(["events", "import", str(empty), "--format", "ses"], env)
    assert failed.returncode == 1 and failed.stdout == ""
    assert failed.stderr.strip() == "error: empty.csv: the file is empty"
    unknown = run(["events", "import", str(empty), "--format", "sparkpost"], env)
    assert unknown.returncode == 1
    assert "unknown format 'sparkpost'; one of ses, sendgrid, mailgun, postmark" in unknown.stderr
    missing = run(["events", "rejects", "abcd"], env)
    assert missing.returncode == 2 and "tenant default has no event import 'abcd'" in missing.stderr


def test_import_refuses_a_fifo_a_device_or_a_folder_at_once(env, tmp_path):
    """A FIFO would block the command until something writes to it, `/dev/zero` never ends.
    (The timeout fails the test, not hangs it, if they are opened.)"""
    fifo = tmp_path / "events.jsonl"
    os.mkfifo(fifo)
    for path, what in (
        (fifo, "a named pipe (FIFO)"),
        (Path("/dev/zero"), "a device"),
        (tmp_path, "a folder"),
    ):
        result = run(["events", "import", str(path), "--format", "ses"], env, timeout=60)
        assert result.returncode == 1
        assert result.stderr.strip() == (
            f"error: {path.name}: is {what}, not a file; give the path of a regular file"
        )


def test_an_import_keeps_its_first_rejects_and_says_how_many_more_were_counted(
    database, env, tmp_path
):
    create_tenant(database.owner, "acme")
    export = tmp_path / "garbage.jsonl"
    export.write_text("{}\n" * (KEPT_REJECTS + 5), encoding="utf-8")
    done = run(["events", "import", str(export), "--format", "ses", "--tenant", "acme"], env)
    assert done.returncode == 0, done.stderr
    assert re.search(rf"^rejected +{KEPT_REJECTS + 5:,}$", done.stdout, re.M)
    note = (
        f"note: the first {KEPT_REJECTS:,} rejected records are kept with their reasons; 5 more "
        "were counted but not kept (fix the file's first rejects and load it again to see them)"
    )
    assert note in done.stderr
    import_id = done.stdout.splitlines()[0].split()[1].rstrip(":")

    args = ["events", "rejects", import_id, "--tenant", "acme", "-o"]
    missing = run([*args, str(tmp_path / "nope" / "r.csv")], env)
    assert missing.returncode == 1
    assert missing.stderr.strip() == (
        f"error: cannot write {tmp_path / 'nope' / 'r.csv'}: its folder {tmp_path / 'nope'} "
        "does not exist; create it first or choose another path"
    )
    written = run([*args, str(tmp_path / "r.csv")], env)
    assert written.returncode == 0 and note in written.stderr
    assert len((tmp_path / "r.csv").read_text().splitlines()) == KEPT_REJECTS + 1
