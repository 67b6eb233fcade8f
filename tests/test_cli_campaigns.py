"""`penguin campaign ...` and `penguin sender ...`, run as a user runs them."""

from __future__ import annotations

import os
import re
from pathlib import Path

import sqlalchemy as sa

from engine import campaign_files as cf
from engine.db import tenant_transaction
from engine.tenants import tenant_id
from tests.conftest import NOW
from tests.factories import run_penguin as run

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "q4-outreach.yaml"


def ok(args: list[str], env: dict[str, str]) -> str:
    result = run(args, env)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def refused(args: list[str], env: dict[str, str]) -> str:
    """The command fails as a user's mistake (exit 2); its error output on one line each."""
    result = run(args, env)
    assert result.returncode == 2, result.stdout + result.stderr
    return result.stderr


def rows_of(table: str) -> dict[str, list[str]]:
    """A rich table's body rows by their first cell."""
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("│┃ ").split("│")]
        if len(cells) > 1 and "@" in cells[0] or len(cells) > 3:
            rows[cells[0]] = cells
    return rows


# -- senders ------------------------------------------------------------------------------------


def test_sender_add_of_an_address_another_tenant_has_is_refused_without_naming_it(env):
    """`penguin sender add sales@beta.example --tenant alpha` when beta has it: refused (it
    would read beta's replies), naming the fix; beta's account is untouched."""
    for tenant in ("alpha", "beta"):
        ok(["tenant", "create", tenant], env)
    ok(["sender", "add", "sales@beta.example", "--tenant", "beta", "--name", "Beta"], env)
    error = refused(["sender", "add", "SALES@beta.example", "--tenant", "alpha"], env)
    assert " ".join(error.split()) == (
        "error: sender address sales@beta.example is already a sender account of another "
        "tenant: an address belongs to one tenant, which receives its replies; use an address "
        "of your own (or have the operator remove it from the tenant that has it)"
    )
    assert "Traceback" not in error
    assert "sales@beta.example" not in ok(["sender", "list", "--tenant", "alpha"], env)
    assert rows_of(ok(["sender", "list", "--tenant", "beta"], env))["sales@beta.example"][1] == (
        "Beta"
    )


def test_sender_add_list_pause_and_resume(env):
    out = ok(["sender", "add", "alice@acme.example", "--name", "Alice"], env)
    assert out.strip() == (
        "added sender alice@acme.example via the local sink, 200 a day, 60 s apart; "
        "mail read from the local sink"
    )
    out = ok(
        [
            "sender",
            "add",
            "bob@acme.example",
            "--smtp-host",
            "smtp.acme.example",
            "--smtp-port",
            "465",
            "--security",
            "tls",
            "--username",
            "bob",
            "--password-env",
            "PENGUIN_SMTP_DEFAULT__BOB",
            "--daily-limit",
            "50",
            "--min-gap",
            "120",
        ],
        env,
    )
    assert out.strip() == (
        "added sender bob@acme.example via smtp.acme.example:465 (tls), 50 a day, 120 s apart; "
        "mail read from the local sink"
    )
    assert "paused sender bob@acme.example: nothing goes out from it until " in ok(
        ["sender", "pause", "BOB@acme.example"], env
    )
    listed = rows_of(ok(["sender", "list"], env))
    assert listed["alice@acme.example"] == [
        "alice@acme.example",
        "Alice",
        "local sink",
        "0 / 200",
        "60 s",
        "active",
    ]
    assert listed["bob@acme.example"] == [
        "bob@acme.example",
        "",
        "smtp.acme.example:465 (tls)",
        "0 / 50",
        "120 s",
        "paused",
    ]
    assert ok(["sender", "resume", "bob@acme.example"], env).strip() == (
        "resumed sender bob@acme.example"
    )
    assert rows_of(ok(["sender", "list"], env))["bob@acme.example"][-1] == "active"


def test_a_sender_names_its_imap_mailbox_and_only_its_own_tenants_password(env):
    out = ok(
        [
            "sender",
            "add",
            "carol@acme.example",
            "--imap-host",
            "imap.acme.example",
            "--imap-password-env",
            "PENGUIN_SMTP_DEFAULT__CAROL_IMAP",
        ],
        env,
    )
    assert out.strip().endswith("mail read from imaps://imap.acme.example:993/INBOX")
    out = ok(["sender", "add", "carol@acme.example", "--imap-folder", "Replies"], env)
    assert out.strip().endswith("mail read from imaps://imap.acme.example:993/Replies")
    refused = run(
        [
            "sender",
            "add",
            "carol@acme.example",
            "--imap-password-env",
            "PENGUIN_SMTP_OTHER__X",
        ],
        env,
    )
    assert refused.returncode == 2 and "PENGUIN_SMTP_DEFAULT__" in refused.stderr
    clear = run(["sender", "add", "carol@acme.example", "--imap-security", "none"], env)
    assert clear.returncode == 2 and "clear text" in clear.stderr
    out = ok(["sender", "add", "carol@acme.example", "--imap-host", ""], env)
    assert out.strip().endswith("mail read from the local sink")


def test_sender_add_again_changes_only_the_settings_given(env):
    ok(["sender", "add", "alice@acme.example", "--name", "Alice", "--daily-limit", "50"], env)
    out = ok(["sender", "add", "alice@acme.example", "--min-gap", "5"], env)
    assert (
        out.strip() == "updated sender alice@acme.example via the local sink, 50 a day, "
        "5 s apart; mail read from the local sink"
    )
    ok(["sender", "add", "alice@acme.example", "--smtp-host", "localhost", "--username", "a"], env)
    out = ok(["sender", "add", "alice@acme.example", "--smtp-host", ""], env)
    assert "via the local sink, 50 a day, 5 s apart" in out
    assert rows_of(ok(["sender", "list"], env))["alice@acme.example"][1] == "Alice"


def test_sender_mistakes_are_refused_naming_what_is_wrong(env):
    assert "sender address 'alice' is not valid" in refused(["sender", "add", "alice"], env)
    assert (
        "smtp_password_env 'PENGUIN_SMTP_OTHER__X' must be named PENGUIN_SMTP_DEFAULT__<NAME>"
        in refused(
            [
                "sender",
                "add",
                "a@acme.example",
                "--smtp-host",
                "smtp.acme.example",
                "--password-env",
                "PENGUIN_SMTP_OTHER__X",
            ],
            env,
        )
    )
    assert "would send the password in clear text" in refused(
        [
            "sender",
            "add",
            "a@acme.example",
            "--smtp-host",
            "smtp.acme.example",
            "--security",
            "none",
            "--username",
            "a",
        ],
        env,
    )
    assert (
        "--smtp-port, --username need --smtp-host: without a host, mail goes to the local sink"
        in refused(["sender", "add", "a@acme.example", "--smtp-port", "25", "--username", "a"], env)
    )
    assert "--security" in refused(["sender", "add", "a@acme.example", "--security", "ssl"], env)
    assert "--daily-limit" in refused(
        ["sender", "add", "a@acme.example", "--daily-limit", "0"], env
    )
    assert "tenant default has no sender account ghost@acme.example; see `penguin sender list`" in (
        refused(["sender", "pause", "ghost@acme.example"], env)
    )
    assert "no tenant named 'ghost'" in refused(["sender", "list", "--tenant", "ghost"], env)


def test_sender_list_counts_todays_sends_against_the_limit(env, database):
    ok(["sender", "add", "alice@acme.example"], env)
    tid = tenant_id(database.app, "default")
    with tenant_transaction(database.app, tid) as conn:
        spec = cf.parse(
            {
                "name": "c",
                "list": "l",
                "senders": ["alice@acme.example"],
                "steps": [{"id": "a", "email": {"subject": "s", "text": "t"}}],
            }
        )
        result = cf.apply(conn, spec, NOW)
        for statement in (
            """
            insert into app.contacts (tenant_id, email)
            values (app.current_tenant_id(), 'x@example.com')
            """,
            """
            insert into app.campaign_contacts (tenant_id, campaign_id, contact_id)
            select app.current_tenant_id(), :campaign_id, id from app.contacts
            """,
            # queued now (the command counts today's UTC day by the wall clock)
            """
            insert into app.sent_emails
                (tenant_id, campaign_contact_id, campaign_id, step_id, contact_id,
                 sender_account_id, recipient_email, subject, message_id, status,
                 attempts, queued_at)
            select cc.tenant_id, cc.id, cc.campaign_id, s.id, cc.contact_id, a.id,
                   'x@example.com', 's', 'm1', 'sent', 1, now()
            from app.campaign_contacts cc, app.campaign_steps s, app.sender_accounts a
            """,
        ):
            conn.execute(sa.text(statement), {"campaign_id": result.campaign_id})
    assert rows_of(ok(["sender", "list"], env))["alice@acme.example"][3] == "1 / 200"


# -- campaigns ----------------------------------------------------------------------------------


def test_a_campaign_file_applies_exports_lists_clones_and_is_approved(env, tmp_path):
    ok(["sender", "add", "alice@acme.example"], env)
    ok(["sender", "add", "bob@acme.example"], env)
    applied = run(["campaign", "apply", str(EXAMPLE)], env)
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.strip() == "created campaign q4-outreach (draft): 8 steps added"
    assert "note: " in applied.stderr and "list 'Q4 prospects' does not exist yet" in (
        applied.stderr
    )
    assert (
        "note: launch needs approval: approval is required and nobody has approved it yet; "
        "penguin campaign approve q4-outreach --by WHO" in applied.stderr
    )
    again = ok(["campaign", "apply", str(EXAMPLE)], env)
    assert again.strip() == "campaign q4-outreach unchanged (draft)"

    exported = ok(["campaign", "export", "q4-outreach"], env)
    assert exported == cf.dump(cf.load(EXAMPLE).data)
    copy = tmp_path / "exported.yaml"
    ok(["campaign", "export", "q4-outreach", "-o", str(copy)], env)
    assert copy.read_text() == exported
    assert ok(["campaign", "apply", str(copy)], env).strip() == (
        "campaign q4-outreach unchanged (draft)"
    )

    assert ok(["campaign", "clone", "q4-outreach", "q1-outreach"], env).strip() == (
        "cloned q4-outreach as draft campaign q1-outreach"
    )
    listed = rows_of(ok(["campaign", "list"], env))
    assert listed["q4-outreach"] == ["q4-outreach", "draft", "Q4 prospects", "8", "0", "0 / 500"]
    assert listed["q1-outreach"][:4] == ["q1-outreach", "draft", "Q4 prospects", "8"]

    approved = ok(["campaign", "approve", "q4-outreach", "--by", "legal@acme.example"], env)
    assert approved.startswith("approved campaign q4-outreach (definition ")
    assert approved.strip().endswith(") by legal@acme.example")
    assert "Missing option '--comment'" in refused(
        ["campaign", "reject", "q4-outreach", "--by", "legal"], env
    )
    rejected = ok(
        ["campaign", "reject", "q1-outreach", "--by", "legal", "--comment", "not in Q1"], env
    )
    assert rejected.startswith("rejected campaign q1-outreach")


def test_a_bad_campaign_file_lists_every_problem_and_changes_nothing(env, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        EXAMPLE.read_text()
        .replace("timezone: Europe/Berlin", "timezone: Europe/Berln")
        .replace("then: warm-followup", "then: warm-folowup")
        .replace("wait: 3d", "wait: 3 days")
    )
    err = refused(["campaign", "apply", str(path)], env)
    lines = err.splitlines()
    assert lines[0] == f"error: 3 problems in {path}:"
    assert lines[1:] == [
        f"  {path}: timezone: unknown timezone 'Europe/Berln'; did you mean Europe/Berlin?",
        f"  {path}: steps[pause].wait: '3 days' is not a duration; give a duration like 45m, "
        "12h, 3d or 2w, or {until: 2026-12-10T09:00}",
        f"  {path}: steps[warm?].then: jumps to 'warm-folowup', which is not a step id of this "
        "campaign (or end); did you mean warm-followup?",
    ]
    assert "campaign q4-outreach" not in ok(["campaign", "list"], env)


def test_a_file_naming_senders_that_do_not_exist_is_refused(env):
    err = refused(["campaign", "apply", str(EXAMPLE)], env)
    assert (
        f"  {EXAMPLE}: senders[#1]: sender account alice@acme.example does not exist in this "
        "tenant; add it with `penguin sender add alice@acme.example`"
    ) in err.splitlines()
    assert err.splitlines()[0] == f"error: 2 problems in {EXAMPLE}:"


def test_campaign_commands_name_what_is_missing(env, tmp_path):
    assert f"{tmp_path / 'nope.yaml'}: no such file" in refused(
        ["campaign", "apply", str(tmp_path / "nope.yaml")], env
    )
    assert "no campaign named 'ghost' in this tenant; see `penguin campaign list`" in refused(
        ["campaign", "export", "ghost"], env
    )
    assert "no campaign named 'ghost'" in refused(["campaign", "clone", "ghost", "x"], env)
    assert "campaign ghost: no such campaign in this tenant" in refused(
        ["campaign", "approve", "ghost", "--by", "me"], env
    )
    assert "no tenant named 'ghost'" in refused(
        ["campaign", "apply", str(EXAMPLE), "--tenant", "ghost"], env
    )


LAUNCHABLE = """\
name: launchy
list: leads
senders: [alice@acme.example]
approval: required
schedule: {window: "00:00-24:00", days: [mon, tue, wed, thu, fri, sat, sun]}
steps:
  - id: intro
    email: {subject: "Hi {{ first_name | default('there') }}", text: "Hello"}
"""


def test_a_campaign_launches_pauses_resumes_and_reports_from_the_cli(env, tmp_path):
    from datetime import UTC, datetime

    from tests.factories import people, write_csv

    ok(["sender", "add", "alice@acme.example", "--min-gap", "0"], env)
    campaign = tmp_path / "launchy.yaml"
    campaign.write_text(LAUNCHABLE)
    ok(["campaign", "apply", str(campaign)], env)
    ok(
        ["upload", str(write_csv(tmp_path / "leads.csv", people("lead", 3))), "--list", "leads"],
        env,
    )

    assert "needs an approval before it launches" in refused(["campaign", "launch", "launchy"], env)
    ok(["campaign", "approve", "launchy", "--by", "legal"], env)
    launched = ok(["campaign", "launch", "launchy"], env)
    assert launched.startswith("campaign launchy is active, 3 enrolled; ")
    assert "only a draft can be launched" in refused(["campaign", "launch", "launchy"], env)

    status = ok(["campaign", "status", "launchy"], env)
    assert "campaign launchy: active; sent today 0 / 500" in status
    assert rows_of(status)["intro"] == ["intro", "email", "enrolled", "3"]
    assert "alice@acme.example" in rows_of(status)
    assert "intro" in ok(["campaign", "forecast", "launchy", "--days", "2"], env)

    at = datetime.now(UTC).isoformat()
    dry = ok(["send", "--now", at, "--dry-run"], env)
    assert "dry run: nothing changed" in dry
    assert re.search(r"│ would send\s+│\s+3 │", dry), dry
    assert rows_of(ok(["campaign", "status", "launchy"], env))["intro"][2] == "enrolled"
    assert "is not an ISO 8601 time" in refused(["send", "--now", "next tuesday"], env)

    assert ok(["campaign", "pause", "launchy"], env).strip() == "campaign launchy is paused"
    assert "only an active one can be paused" in refused(["campaign", "pause", "launchy"], env)
    assert ok(["campaign", "resume", "launchy"], env).strip() == "campaign launchy is active"
    assert "no campaign named 'nope'" in refused(["campaign", "status", "nope"], env)
    assert "--days" in refused(["campaign", "forecast", "launchy", "--days", "0"], env)


def test_hints_naming_a_command_carry_the_tenant_it_was_run_for(env):
    ok(["tenant", "create", "scratch"], env)
    ok(["sender", "add", "bob@acme.example", "--tenant", "scratch"], env)
    out = ok(["sender", "pause", "bob@acme.example", "--tenant", "scratch"], env)
    assert "`penguin sender resume bob@acme.example --tenant scratch`" in out
    assert "see `penguin sender list --tenant scratch`" in refused(
        ["sender", "pause", "nobody@acme.example", "--tenant", "scratch"], env
    )
    assert "`penguin sender add alice@acme.example --tenant scratch`" in refused(
        ["campaign", "apply", str(EXAMPLE), "--tenant", "scratch"], env
    )
    assert "see `penguin campaign list --tenant scratch`" in refused(
        ["campaign", "forecast", "ghost", "--tenant", "scratch"], env
    )
    # The default tenant's hints stay as short as its commands.
    assert "see `penguin sender list`" in refused(["sender", "pause", "nobody@x.example"], env)


def test_campaign_status_and_list_count_the_same_days_sends(env, database, smtp_server, tmp_path):
    """A campaign's "sent today" is its messages of its local day: a pass run as if it were
    tomorrow (`penguin send --now`) queues tomorrow's, which neither command counts today."""
    from datetime import timedelta

    from engine.sending.scheduler import send_due
    from tests.factories import people, seed_tenant

    tenant = seed_tenant(database, "acme", NOW, tmp_path, rows=people("acme", 5))
    with tenant_transaction(database.app, tenant.tenant_id) as conn:
        conn.execute(sa.text("update app.campaign_settings set daily_limit = 3"))
    assert send_due(database.app, smtp_server.server(), NOW).sent == 3
    assert send_due(database.app, smtp_server.server(), NOW + timedelta(days=1)).sent == 2

    for day, sent in ((NOW, 3), (NOW + timedelta(days=1), 2)):
        at = ["--now", day.isoformat(), "--tenant", "acme"]
        status = ok(["campaign", "status", "acme outreach", *at], env)
        assert f"sent today {sent} / 3 (UTC day)" in status
        assert rows_of(ok(["campaign", "list", *at], env))["acme outreach"][5] == f"{sent} / 3"


def test_sender_accounts_and_campaign_files_take_addresses_by_one_rule(env, tmp_path):
    """`.test` (reserved for testing) is accepted by both, as the demo and tests use it; the
    other special-use domains by neither, with email-validator's reason."""
    out = ok(["sender", "add", "sales@Acme.TEST"], env)
    assert out.startswith("added sender sales@acme.test via the local sink")
    campaign = tmp_path / "c.yaml"
    campaign.write_text(
        "name: c\nlist: l\nsenders: [sales@acme.test]\nreply_to: help@acme.test\n"
        "steps:\n  - id: a\n    email: {subject: s, text: t}\n"
    )
    assert "created campaign c (draft)" in ok(["campaign", "apply", str(campaign)], env)

    reason = "is a special-use or reserved name that cannot be used with email"
    assert reason in refused(["sender", "add", "sales@acme.local"], env)
    campaign.write_text(campaign.read_text().replace("help@acme.test", "help@acme.local"))
    assert reason in refused(["campaign", "apply", str(campaign)], env)


def test_apply_refuses_a_fifo_or_a_device_at_once_and_names_a_nul_byte(env, tmp_path):
    """A FIFO would block the command until something writes to it, `/dev/zero` never ends:
    neither is opened for reading. (The timeout fails the test, not hangs it, if they are.)"""
    fifo = tmp_path / "c.yaml"
    os.mkfifo(fifo)
    for path, what in ((fifo, "a named pipe (FIFO)"), (Path("/dev/zero"), "a device")):
        result = run(["campaign", "apply", str(path)], env, timeout=60)
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip() == (
            f"error: {path}: is {what}, not a file; give the path of a regular file"
        )
    nul = tmp_path / "nul.yaml"
    nul.write_bytes(EXAMPLE.read_bytes().replace(b"name: ", b"name: \x00", 1))
    assert refused(["campaign", "apply", str(nul)], env).strip() == (
        f"error: {nul}: line 12, column 7: the control character U+0000 (NUL) cannot be in a "
        "campaign file; remove it (save the file as plain UTF-8 text)"
    )
