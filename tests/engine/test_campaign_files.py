"""Campaign files: every problem named with its file, step and key; apply, export, clone and
approvals against a real database."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from engine import campaign_files as cf
from engine import templates
from engine.campaign_files import CampaignFileError
from engine.db import tenant_transaction
from engine.ingest import ingest_file
from engine.senders import create_sender
from engine.templates import RenderLimits
from engine.tenants import create_tenant
from tests.conftest import NOW
from tests.factories import write_csv

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "q4-outreach.yaml"

#: The issue's example, verbatim (comments and all).
ISSUE_EXAMPLE = """\
name: q4-outreach                # unique in the tenant
description: CTOs, Q4            # optional
list: Q4 prospects               # the contact list; created if missing
senders: [alice@acme.test, bob@acme.test]   # sender accounts, rotated; at least one
from_name: Alice at Acme         # optional; default: the sender account's name
reply_to: sales@acme.test        # optional
timezone: Europe/Berlin          # IANA name; default UTC
schedule:
  strategy: immediate            # immediate | scheduled | optimized
  start_at: 2026-12-01T09:00     # scheduled: nothing goes out before it (campaign tz)
  end_at: null                   # optional: nothing goes out after it
  window: "09:00-17:00"          # local time: the contact's timezone when known, else the campaign's
  days: [mon, tue, wed, thu, fri]
limits:
  daily: 500                     # messages per campaign per local day
tracking: {opens: true, clicks: true}
stop_on_reply: contact           # contact | company (everyone at the same domain) | never
steps:                           # run in order unless `next`, `then` or `else` says otherwise
  - id: intro                    # unique in the campaign; keeps enrollments on re-apply
    email:
      subject: "Quick question, {{ first_name | default('there') }}"
      text: |
        Hi {{ first_name | default('there') }}, ...
      html: null                 # optional
      sender: null               # optional: one sender account for this step only
  - id: pause
    wait: 3d                     # 45m, 12h, 3d, 2w; or {until: 2026-12-10T09:00}
  - id: warm?
    condition: {opened: intro}   # see below
    then: warm-followup          # step id, or `end`
    else: cold-followup
  - id: warm-followup
    email: {subject: "...", text: "..."}
    next: end                    # optional jump; `end` completes the enrollment
  - id: cold-followup
    action: {tag: cold}          # see below
"""  # noqa: E501

SENDER = "sales@acme.example"

BASE: dict[str, Any] = {
    "name": "q4",
    "list": "leads",
    "senders": [SENDER],
    "steps": [
        {"id": "intro", "email": {"subject": "Hi {{ first_name }}", "text": "Hello"}},
        {"id": "pause", "wait": "3d"},
        {"id": "warm?", "condition": {"opened": "intro"}, "then": "warm", "else": "cold"},
        {"id": "warm", "email": {"subject": "Re", "text": "Again"}, "next": "end"},
        {"id": "cold", "action": {"tag": "cold"}},
    ],
}


def campaign(**top: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    data.update(top)
    return data


def with_steps(*steps: dict[str, Any], **top: Any) -> dict[str, Any]:
    return campaign(steps=list(steps), **top)


def step(index: int, **changes: Any) -> dict[str, Any]:
    """BASE with step `index` changed (a value of None removes the key)."""
    data = campaign()
    for key, value in changes.items():
        if value is None:
            data["steps"][index].pop(key, None)
        else:
            data["steps"][index][key] = value
    return data


def problems_of(data: Any, source: str = "c.yaml") -> list[str]:
    with pytest.raises(CampaignFileError) as caught:
        cf.parse(data, source)
    return caught.value.problems


def problems_of_text(text: str, source: str = "c.yaml") -> list[str]:
    with pytest.raises(CampaignFileError) as caught:
        cf.loads(text, source)
    return caught.value.problems


def one_problem(data: Any) -> str:
    found = problems_of(data)
    assert len(found) == 1, found
    return found[0]


# -- the format ---------------------------------------------------------------------------------


def test_the_issue_example_loads_with_its_defaults_filled_in():
    spec = cf.loads(ISSUE_EXAMPLE, "issue.yaml")
    assert spec.name == "q4-outreach"
    assert spec.data["schedule"] == {
        "strategy": "immediate",
        "start_at": "2026-12-01T09:00",
        "end_at": None,
        "window": "09:00-17:00",
        "days": ["mon", "tue", "wed", "thu", "fri"],
    }
    assert spec.data["approval"] == "none"
    assert [s["id"] for s in spec.steps] == [
        "intro",
        "pause",
        "warm?",
        "warm-followup",
        "cold-followup",
    ]
    assert list(spec.data) == list(cf.TOP_KEYS)


def test_the_example_campaign_uses_every_step_type_and_loads():
    spec = cf.load(EXAMPLE)
    kinds = {next(k for k in cf.STEP_TYPES if k in s) for s in spec.steps}
    assert kinds == set(cf.STEP_TYPES)
    assert any("variants" in s.get("email", {}) for s in spec.steps)
    assert spec.data["approval"] == "required"


def test_a_minimal_file_gets_every_default():
    spec = cf.parse(
        {"name": "x", "list": "l", "senders": [SENDER], "steps": [{"id": "a", "wait": "1h"}]}
    )
    assert spec.data == {
        "name": "x",
        "description": None,
        "list": "l",
        "senders": [SENDER],
        "from_name": None,
        "reply_to": None,
        "timezone": "UTC",
        **copy.deepcopy(cf.DEFAULTS),
        "steps": [{"id": "a", "wait": "1h"}],
    }


def test_the_same_definition_written_differently_has_the_same_fingerprint():
    a = cf.parse(campaign(schedule={"window": "9:00-17:00", "days": ["fri", "mon"]}))
    b = cf.parse(campaign(schedule={"window": "09:00-17:00", "days": ["mon", "fri"]}))
    assert a.data == b.data and a.sha256 == b.sha256
    assert cf.parse(campaign(description="changed")).sha256 != a.sha256


@pytest.mark.parametrize("text", ["45m", "12h", "3d", "2w"])
def test_durations_in_minutes_hours_days_and_weeks_are_accepted(text):
    assert cf.parse(step(1, wait=text)).steps[1]["wait"] == text


def test_names_are_kept_without_surrounding_blanks():
    spec = cf.parse(campaign(name=" q4 ", list="leads "))
    assert (spec.data["name"], spec.data["list"]) == ("q4", "leads")


def test_unicode_step_ids_and_jumps_work():
    spec = cf.parse(
        with_steps(
            {"id": "привет", "email": {"subject": "S", "text": "T"}, "next": "ждать 🐧"},
            {"id": "skipped", "wait": "1d"},
            {"id": "ждать 🐧", "wait": "1d", "next": "skipped"},
        )
    )
    assert [s["id"] for s in spec.steps] == ["привет", "skipped", "ждать 🐧"]


# -- every validation error, named with file, step and key -------------------------------------

CASES = [
    # unknown keys, at every level
    (campaign(colour="red"), "c.yaml: colour: unknown key"),
    (
        campaign(schedule={"windw": "09:00-17:00"}),
        "schedule.windw: unknown key; did you mean window?",
    ),
    (campaign(limits={"weekly": 5}), "limits.weekly: unknown key"),
    (campaign(tracking={"replies": True}), "tracking.replies: unknown key"),
    (step(0, subject="Hi"), "steps[intro].subject: unknown key"),
    (step(0, email={"subject": "S", "body": "B"}), "steps[intro].email.body: unknown key"),
    (
        step(0, email={"variants": [{"subject": "S", "text": "T", "colour": 1}]}),
        "steps[intro].email.variants[#1].colour: unknown key",
    ),
    (step(1, wait={"until": "2026-12-10T09:00", "tz": "UTC"}), "steps[pause].wait.tz: unknown key"),
    # missing required keys
    ({k: v for k, v in BASE.items() if k != "name"}, "c.yaml: missing required key 'name'"),
    ({k: v for k, v in BASE.items() if k != "list"}, "missing required key 'list'"),
    ({k: v for k, v in BASE.items() if k != "senders"}, "missing required key 'senders'"),
    ({k: v for k, v in BASE.items() if k != "steps"}, "missing required key 'steps'"),
    (step(0, id=None), "steps[#1]: missing required key 'id'"),
    (with_steps({"id": "a", "next": "end"}), "steps[a]: missing the step's type"),
    (with_steps({"id": "a", "wait": "1d", "action": {"tag": "x"}}), "this one has wait and action"),
    (step(0, email={"subject": "S"}), "steps[intro].email: missing text"),
    (step(0, email={"text": "T"}), "steps[intro].email: missing subject"),
    # jumps
    (step(3, next="nowhere"), "steps[warm].next: jumps to 'nowhere', which is not a step id"),
    (step(2, then="wram"), "steps[warm?].then: jumps to 'wram'"),
    (step(2, **{"else": "colt"}), "steps[warm?].else: jumps to 'colt'"),
    (step(3, next=7), "steps[warm].next: must be a step id or end"),
    (step(3, then="cold"), "steps[warm].then: only a condition step has then/else"),
    (step(2, next="cold"), "steps[warm?].next: a condition step jumps with then/else, not next"),
    # the graph
    (step(0, next="warm"), "steps[pause]: unreachable"),
    (
        with_steps(
            {"id": "a", "email": {"subject": "S", "text": "T"}},
            {"id": "check", "condition": {"opened": "a"}, "then": "end", "else": "tag"},
            {"id": "tag", "action": {"tag": "x"}, "next": "check"},
        ),
        "steps[check]: the loop check → tag → check has no wait with a duration",
    ),
    (
        with_steps(
            {"id": "a", "wait": {"until": "2026-12-01T09:00"}},
            {"id": "b", "action": {"tag": "x"}, "next": "a"},
        ),
        "steps[a]: the loop a → b → a has no wait with a duration",
    ),
    (
        with_steps(
            {"id": "mail", "email": {"subject": "S", "text": "T"}},
            {"id": "wait", "wait": "2d"},
            {"id": "again?", "condition": {"opened": "mail"}, "then": "end", "else": "mail"},
        ),
        "steps[mail]: email step mail is in the loop mail → wait → again? → mail",
    ),
    # waits
    (step(1, wait=None), "steps[pause]: missing the step's type"),
    (campaign(steps=[{"id": "w", "wait": None}]), "steps[w].wait: a wait needs a duration"),
    (step(1, wait={}), "steps[pause].wait: missing required key 'until'"),
    (step(1, wait={"until": None}), "steps[pause].wait.until: must be a date and time"),
    (step(1, wait={"until": "next tuesday"}), "steps[pause].wait.until: must be a date and time"),
    (step(1, wait=45), "steps[pause].wait: a wait needs a duration like 45m"),
    (step(1, wait="3 days"), "steps[pause].wait: '3 days' is not a duration"),
    (step(1, wait="0d"), "steps[pause].wait: '0d' is not a duration"),
    (step(1, wait="-1d"), "'-1d' is not a duration"),
    (step(1, wait="1.5h"), "'1.5h' is not a duration"),
    (step(1, wait="3y"), "'3y' is not a duration"),
    (step(1, wait="600w"), "steps[pause].wait: 600w is longer than 3650 days"),
    # email parts and variants
    (
        step(0, email={"subject": "S", "text": "T", "variants": [{"subject": "S", "text": "T"}]}),
        "steps[intro].email.subject: an email step has either subject/text/html or variants",
    ),
    (step(0, email={}), "steps[intro].email: missing subject and text"),
    (step(0, email={"variants": []}), "steps[intro].email.variants: must be a list of"),
    (
        step(0, email={"variants": [{"subject": "S"}]}),
        "steps[intro].email.variants[#1]: missing required key 'text'",
    ),
    (step(0, email="Hello"), "steps[intro].email: must be a mapping of subject, text"),
    (step(0, email={"subject": "", "text": "T"}), "steps[intro].email.subject: must not be empty"),
    (
        step(0, email={"subject": "S", "text": 42}),
        "steps[intro].email.text: must be text (quote it)",
    ),
    (
        step(0, email={"subject": "S", "text": "T", "sender": "nobody"}),
        "steps[intro].email.sender: 'nobody' is not a valid address",
    ),
    # templates
    (
        step(0, email={"subject": "Hi {{ first_name ", "text": "T"}),
        "steps[intro].email.subject: TemplateSyntaxError",
    ),
    (
        step(0, email={"subject": "S", "text": "{% if %}x{% endif %}"}),
        "steps[intro].email.text: TemplateSyntaxError",
    ),
    (
        step(0, email={"variants": [{"subject": "S", "text": "{{ 1 +"}]}),
        "steps[intro].email.variants[#1].text: TemplateSyntaxError",
    ),
    # settings
    (campaign(timezone="Europe/Berln"), "timezone: unknown timezone 'Europe/Berln'; did you mean"),
    (campaign(timezone="Mars/Olympus"), "timezone: unknown timezone 'Mars/Olympus'"),
    (campaign(timezone="localtime"), "timezone: unknown timezone 'localtime'"),
    (campaign(schedule={"window": "9-5"}), "schedule.window: send window '9-5'"),
    (campaign(schedule={"window": "17:00-09:00"}), "schedule.window: send window"),
    (campaign(schedule={"window": "25:00-26:00"}), "schedule.window: send window"),
    (
        campaign(schedule={"window": 540}),
        'schedule.window: must be a time range like "09:00-17:00"',
    ),
    (campaign(schedule={"days": []}), "schedule.days: must be a list of days"),
    (campaign(schedule={"days": "mon"}), "schedule.days: must be a list of days"),
    (campaign(schedule={"days": ["mon", "funday"]}), "schedule.days[#2]: must be one of mon"),
    (campaign(schedule={"days": ["mon", "Mon"]}), "schedule.days[#2]: mon is listed twice"),
    (campaign(schedule={"strategy": "asap"}), "schedule.strategy: must be one of immediate"),
    (
        campaign(schedule={"strategy": "scheduled"}),
        "schedule.start_at: strategy scheduled needs a start_at",
    ),
    (campaign(schedule={"start_at": "soon"}), "schedule.start_at: must be a date and time"),
    (
        campaign(schedule={"start_at": "2026-12-01T09:00", "end_at": "2026-11-01T09:00"}),
        "schedule.end_at: 2026-11-01T09:00 is not after start_at 2026-12-01T09:00",
    ),
    (campaign(limits={"daily": 0}), "limits.daily: must be a whole number from 1"),
    (campaign(limits={"daily": True}), "limits.daily: must be a whole number from 1"),
    (campaign(tracking={"opens": "yes"}), "tracking.opens: must be true or false"),
    (campaign(stop_on_reply="always"), "stop_on_reply: must be one of contact, company, never"),
    (campaign(approval="maybe"), "approval: must be one of none, required"),
    (campaign(senders=[]), "senders: must be a list of at least one sender address"),
    (campaign(senders=SENDER), "senders: must be a list of at least one sender address"),
    (campaign(senders=["not-an-address"]), "senders[#1]: 'not-an-address' is not a valid address"),
    (campaign(senders=[SENDER, SENDER.upper()]), "senders[#2]: "),
    (campaign(reply_to="sales at acme"), "reply_to: 'sales at acme' is not a valid address"),
    (campaign(from_name="Alice\nBcc: evil@x.example"), "from_name: must be one line"),
    (campaign(name=""), "name: must not be empty"),
    (campaign(name="x" * 201), "name: is 201 characters long; at most 200"),
    (campaign(list=None), "list: must be text"),
    (campaign(steps=[]), "steps: must be a list of at least one step"),
    (campaign(steps={"intro": {}}), "steps: must be a list of at least one step"),
    # step ids
    (
        with_steps({"id": "a", "wait": "1d"}, {"id": "a", "wait": "2d"}),
        "steps[a].id: the id 'a' is used by an earlier step",
    ),
    (with_steps({"id": "end", "wait": "1d"}), "steps[end].id: 'end' is reserved"),
    (with_steps({"id": 1, "wait": "1d"}), "steps[#1].id: must be text (quote it)"),
    (with_steps({"id": "  ", "wait": "1d"}), "steps[#1].id: must not be empty"),
    (with_steps("intro"), "steps[#1]: must be a mapping with an id and a type"),
    # conditions and actions (checked by engine.sequence.conditions)
    (step(2, condition={"opened": "nowhere"}), "steps[warm?].condition.opened: no step 'nowhere'"),
    (step(2, condition={"bogus": 1}), "steps[warm?].condition: unknown condition 'bogus'"),
    (step(4, action={"frobnicate": "x"}), "steps[cold].action: unknown action 'frobnicate'"),
    (step(4, action={"tag": ""}), "steps[cold].action.tag: a tag"),
    # odd values
    (step(0, email={"subject": "S", "text": "a\x00b"}), "steps[intro].email.text: contains a NUL"),
    (step(4, action={"tag": "a\x00b"}), "steps[cold].action.tag: contains a NUL character"),
    (step(4, action={"set": {"score": float("nan")}}), "steps[cold].action.set.score: nan is not"),
    (
        step(2, condition={"field": "x", "gt": float("inf")}),
        "steps[warm?].condition.gt: inf is not a number",
    ),
]


@pytest.mark.parametrize(("data", "expected"), CASES, ids=[c[1][:60] for c in CASES])
def test_every_problem_names_the_file_the_step_and_the_key(data, expected):
    found = problems_of(data)
    assert any(expected in line for line in found), found
    assert all(line.startswith("c.yaml: ") for line in found), found


def test_every_problem_of_a_file_is_reported_at_once():
    data = campaign(timezone="Nowhere/City", colour="red", limits={"daily": -1})
    data["steps"][3]["next"] = "nowhere"
    data["steps"][0]["email"]["subject"] = "{{ broken"
    found = problems_of(data)
    assert len(found) == 5, found
    message = str(CampaignFileError(found, "c.yaml"))
    assert message.startswith("5 problems in c.yaml:\n  c.yaml: ")


def test_a_boolean_key_says_yaml_read_it_as_true_or_false():
    found = problems_of_text("name: x\nlist: l\nsenders: [a@b.example]\non: 1\nsteps: []\n")
    assert (
        "c.yaml: True: keys must be text (YAML reads unquoted yes/no/on/off as true/false: "
        "quote the key)" in found
    )
    assert "c.yaml: steps: must be a list of at least one step, not an empty list" in found


# -- odd input ----------------------------------------------------------------------------------


def test_a_repeated_key_is_a_problem_with_both_lines():
    text = "name: a\nname: b\nlist: l\nsenders: [a@b.example]\nsteps:\n  - {id: s, wait: 1d}\n"
    assert problems_of_text(text) == [
        "c.yaml: line 2: key 'name' appears twice in one mapping (first on line 1); keep one"
    ]


def test_a_file_that_is_not_yaml_names_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nsteps:\n  - id: a\n   wait: 1d\n")
    with pytest.raises(CampaignFileError) as caught:
        cf.load(path)
    (problem,) = caught.value.problems
    assert problem.startswith(f"{path}: line 4, column ") and "not valid YAML" in problem


@pytest.mark.parametrize(
    ("text", "what"),
    [
        ("", "not empty"),
        ("# only a comment\n", "not empty"),
        ("- name: x\n", "not a list"),
        ("just words\n", "not 'just words'"),
        ("42\n", "not a number (42)"),
    ],
)
def test_a_file_that_is_not_a_mapping_says_what_it_is(text, what):
    (problem,) = problems_of_text(text)
    assert problem == (
        f"c.yaml: the file must be a mapping with name, list, senders and steps, {what}"
    )


def test_a_file_over_the_size_limit_is_refused_unread(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_bytes(b"name: x\ndescription: '" + b"a" * (5 * 1024 * 1024) + b"'\n")
    with pytest.raises(CampaignFileError) as caught:
        cf.load(path)
    assert caught.value.problems == [
        f"{path}: the file is 5.0 MiB; a campaign file may be at most 1 MiB"
    ]


def test_a_file_that_is_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: x\ndescription: café\n".encode("latin-1"))
    with pytest.raises(CampaignFileError) as caught:
        cf.load(path)
    assert caught.value.problems == [f"{path}: line 2: not UTF-8 text (byte 0xe9)"]


def test_a_nul_byte_or_another_control_character_names_its_line_and_what_to_do(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"name: q4\nlist: le\x00ads\n")
    with pytest.raises(CampaignFileError) as caught:
        cf.load(path)
    assert caught.value.problems == [
        f"{path}: line 2, column 9: the control character U+0000 (NUL) cannot be in a campaign "
        "file; remove it (save the file as plain UTF-8 text)"
    ]
    assert problems_of_text("name: q4\n\x1b[31m: x\n") == [
        "c.yaml: line 2, column 1: the control character U+001B (escape) cannot be in a "
        "campaign file; remove it (save the file as plain UTF-8 text)"
    ]


def test_a_device_is_refused_unread(tmp_path):
    with pytest.raises(CampaignFileError) as caught:
        cf.load(Path("/dev/zero"))
    assert caught.value.problems == [
        "/dev/zero: is a device, not a file; give the path of a regular file"
    ]


def test_a_missing_file_or_a_folder_is_named(tmp_path):
    for path, what in (
        (tmp_path / "nope.yaml", "no such file"),
        (tmp_path, "is a folder, not a file; give the path of a regular file"),
    ):
        with pytest.raises(CampaignFileError) as caught:
            cf.load(path)
        assert caught.value.problems == [f"{path}: {what}"]


def test_an_alias_bomb_is_refused_before_it_is_expanded():
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    (problem,) = problems_of_text("\n".join(lines) + "\n")
    assert "values once its aliases are expanded; a campaign file may hold at most" in problem


def test_an_alias_that_contains_itself_is_refused():
    (problem,) = problems_of_text("name: &n [*n]\n")
    assert problem == "c.yaml: line 1: a YAML alias refers to the value that contains it"


def test_a_file_nested_too_deeply_is_refused():
    assert problems_of_text("[" * 5000 + "]" * 5000) == ["c.yaml: the file nests too deeply"]


def test_yaml_dates_in_a_file_are_read_as_campaign_local_times():
    text = EXAMPLE.read_text().replace("2026-12-01T09:00", "2026-12-01 09:00:00")
    spec = cf.loads(text)
    assert spec.data["schedule"]["start_at"] == "2026-12-01T09:00"
    assert cf.resolve_moment("2026-12-01T09:00", "Europe/Berlin") == datetime(
        2026, 12, 1, 8, 0, tzinfo=UTC
    )


def test_a_template_variable_guarded_by_default_or_defined_is_not_needed():
    source = (
        "{{ first_name | default('there') }} {{ plan }} {% for x in items %}{{ x }}{% endfor %}"
        "{% if city is defined %}{{ city }}{% endif %}{{ attributes.Plan }}{{ range(2) | list }}"
        "{% set y = 1 %}{{ y }}{{ (company ~ '!') | default('') }}"
    )
    # `attributes` and Jinja's globals are always defined; `check` leaves them out
    assert cf.template_variables(source) - {"attributes", "range"} == {"plan", "items", "company"}


# -- against the database -----------------------------------------------------------------------

BOB = "bob@acme.example"


@pytest.fixture
def acme(database):
    """Tenant acme with two sender accounts."""
    tenant_id, _ = create_tenant(database.owner, "acme")
    with tenant_transaction(database.app, tenant_id) as conn:
        create_sender(conn, SENDER, "Acme Sales")
        create_sender(conn, BOB, "Bob")
    return tenant_id


def tx(database, tenant_id):
    return tenant_transaction(database.app, tenant_id)


def apply(database, tenant_id, data_or_spec, now=NOW) -> cf.ApplyResult:
    spec = data_or_spec if isinstance(data_or_spec, cf.CampaignSpec) else cf.parse(data_or_spec)
    with tx(database, tenant_id) as conn:
        return cf.apply(conn, spec, now)


def refusal(database, tenant_id, data) -> list[str]:
    with pytest.raises(CampaignFileError) as caught:
        apply(database, tenant_id, data)
    return caught.value.problems


def upload(database, tenant_id, tmp_path, rows, list_name="leads"):
    path = write_csv(tmp_path / f"{list_name}-{len(rows)}.csv", rows)
    ingest_file(database.app, tenant_id, path, list_name, NOW)


ROWS = [
    ["ada@example.com", "Ada", "Lovelace", "Analytical", "pro"],
    ["alan@example.com", "Alan", "", "Bletchley", "free"],
]

STEPS = sa.text(
    """
    select s.id, s.key, s.step_order, s.step_type, s.removed_at, n.key as next_key,
           t.key as then_key, f.key as else_key, s.subject, s.body_text, s.variants,
           s.wait_duration, s.wait_until, s.condition_rules, s.action_payload,
           s.sender_account_id
    from app.campaign_steps s
    left join app.campaign_steps n on n.id = s.next_step_id
    left join app.campaign_steps t on t.id = s.true_next_step_id
    left join app.campaign_steps f on f.id = s.false_next_step_id
    where s.campaign_id = :id
    order by s.step_order nulls last, s.key
    """
)


def steps_of(database, tenant_id, campaign_id) -> dict[str, Any]:
    with tx(database, tenant_id) as conn:
        return {row.key: row for row in conn.execute(STEPS, {"id": campaign_id})}


def set_status(database, tenant_id, name, status):
    with tx(database, tenant_id) as conn:
        conn.execute(
            sa.text("update app.campaigns set status = :status where name = :name"),
            {"status": status, "name": name},
        )


def enroll_on(database, tenant_id, campaign_id, key, status="active") -> int:
    """Every contact of the tenant enrolled in the campaign, standing on step `key`."""
    with tx(database, tenant_id) as conn:
        return conn.execute(
            sa.text(
                """
                insert into app.campaign_contacts
                    (tenant_id, campaign_id, contact_id, status, current_step_id, next_run_at)
                select app.current_tenant_id(), :campaign_id, c.id, :status, s.id, :now
                from app.contacts c, app.campaign_steps s
                where s.campaign_id = :campaign_id and s.key = :key and s.removed_at is null
                """
            ),
            {"campaign_id": campaign_id, "key": key, "status": status, "now": NOW},
        ).rowcount


def test_apply_creates_a_draft_with_its_settings_senders_and_linked_steps(database, acme):
    spec = cf.parse(
        campaign(
            senders=[BOB, SENDER],
            timezone="Europe/Berlin",
            stop_on_reply="company",
            schedule={"window": "08:30-24:00", "days": ["sat", "mon"]},
            limits={"daily": 42},
            tracking={"clicks": False},
        )
    )
    result = apply(database, acme, spec)
    assert (result.outcome, result.status) == ("created", "draft")
    assert result.added == ("intro", "pause", "warm?", "warm", "cold")
    steps = steps_of(database, acme, result.campaign_id)
    assert [(k, s.step_order, s.step_type) for k, s in steps.items()] == [
        ("intro", 1, "email"),
        ("pause", 2, "wait"),
        ("warm?", 3, "condition"),
        ("warm", 4, "email"),
        ("cold", 5, "action"),
    ]
    links = {k: (s.next_key, s.then_key, s.else_key) for k, s in steps.items()}
    assert links == {
        "intro": ("pause", None, None),
        "pause": ("warm?", None, None),
        "warm?": (None, "warm", "cold"),
        "warm": (None, None, None),  # next: end
        "cold": (None, None, None),  # the last step
    }
    assert steps["pause"].wait_duration == timedelta(days=3)
    assert steps["warm?"].condition_rules == {"opened": "intro"}
    assert steps["cold"].action_payload == {"tag": "cold"}
    with tx(database, acme) as conn:
        row = conn.execute(
            sa.text(
                """
                select c.status, c.timezone, c.spec, c.spec_sha256, c.approval_required,
                       l.name as list_name, st.send_window_start, st.send_window_end,
                       st.send_days, st.daily_limit, st.stop_on_reply, st.track_opens,
                       st.track_clicks,
                       array(select a.email from app.campaign_senders cs
                             join app.sender_accounts a on a.id = cs.sender_account_id
                             where cs.campaign_id = c.id order by cs.position) as senders
                from app.campaigns c
                join app.contact_lists l on l.id = c.list_id
                join app.campaign_settings st on st.campaign_id = c.id
                """
            )
        ).one()
    assert row.spec == spec.data and row.spec_sha256 == spec.sha256
    assert (row.status, row.timezone, row.list_name, row.approval_required) == (
        "draft",
        "Europe/Berlin",
        "leads",
        False,
    )
    assert (str(row.send_window_start), str(row.send_window_end)) == ("08:30:00", "00:00:00")
    assert (sorted(row.send_days), row.daily_limit, row.stop_on_reply) == ([1, 6], 42, "company")
    assert (row.track_opens, row.track_clicks) == (True, False)
    assert row.senders == [BOB, SENDER]


def test_applying_the_same_file_twice_changes_nothing(database, acme):
    first = apply(database, acme, campaign())
    with tx(database, acme) as conn:
        before = conn.execute(sa.text("select updated_at from app.campaigns")).scalar_one()
    again = apply(database, acme, campaign(), now=NOW + timedelta(hours=1))
    assert (again.outcome, again.campaign_id) == ("unchanged", first.campaign_id)
    assert again.summary() == "campaign q4 unchanged (draft)"
    with tx(database, acme) as conn:
        assert conn.execute(sa.text("select updated_at from app.campaigns")).scalar_one() == before


def test_a_re_apply_keeps_the_rows_of_kept_steps_and_soft_deletes_the_removed_ones(database, acme):
    first = apply(database, acme, campaign())
    before = steps_of(database, acme, first.campaign_id)
    data = campaign()
    data["steps"][0]["email"]["text"] = "Hello again"
    data["steps"][2]["else"] = "nurture"
    data["steps"][4] = {"id": "nurture", "action": {"add_to_list": "nurture"}}
    later = NOW + timedelta(days=1)
    result = apply(database, acme, data, now=later)
    assert (result.outcome, result.added, result.changed, result.removed) == (
        "updated",
        ("nurture",),
        ("intro", "warm?"),
        ("cold",),
    )
    assert (
        result.summary() == "updated campaign q4 (draft): 1 step added, 2 steps changed, "
        "1 step removed"
    )
    after = steps_of(database, acme, first.campaign_id)
    for key in ("intro", "pause", "warm?", "warm"):
        assert after[key].id == before[key].id
    assert after["intro"].body_text == "Hello again"
    assert after["warm?"].else_key == "nurture"
    assert (after["cold"].removed_at, after["cold"].step_order) == (later, None)
    assert after["nurture"].step_order == 5


def test_steps_can_be_reordered_and_change_type_in_place(database, acme):
    first = apply(database, acme, campaign())
    data = campaign()
    data["steps"] = [data["steps"][1], data["steps"][0], *data["steps"][2:]]  # pause, intro, ...
    data["steps"][0] = {"id": "pause", "email": {"subject": "Now mail", "text": "T"}}
    apply(database, acme, data)
    steps = steps_of(database, acme, first.campaign_id)
    assert [(k, s.step_order, s.step_type) for k, s in steps.items()][:2] == [
        ("pause", 1, "email"),
        ("intro", 2, "email"),
    ]
    assert steps["pause"].wait_duration is None and steps["pause"].subject == "Now mail"
    assert steps["pause"].next_key == "intro" and steps["intro"].next_key == "warm?"


@pytest.mark.parametrize("status", ["active", "scheduled"])
def test_changed_steps_of_a_running_campaign_are_refused_with_the_command_to_pause(
    database, acme, status
):
    apply(database, acme, campaign())
    set_status(database, acme, "q4", status)
    data = campaign()
    data["steps"][0]["email"]["subject"] = "Changed"
    assert refusal(database, acme, data) == [
        f"<text>: steps: campaign q4 is {status}: its steps cannot change while it runs; "
        "pause it first: penguin campaign pause q4 --tenant acme"
    ]
    moved = refusal(database, acme, campaign(list="other list"))
    assert moved == [
        f"<text>: list: campaign q4 is {status}: its list cannot change while it runs; "
        "pause it first: penguin campaign pause q4 --tenant acme"
    ]


def test_a_hint_passes_a_campaign_name_with_spaces_or_shell_characters_as_one_quoted_word(
    database, acme
):
    """A hint is a command to copy into a shell: the name stays one argument and runs
    nothing it holds."""
    for name, word in [("Spring launch", "'Spring launch'"), ("q4;rm -r x", "'q4;rm -r x'")]:
        apply(database, acme, campaign(name=name))
        set_status(database, acme, name, "active")
        data = campaign(name=name)
        data["steps"][0]["email"]["subject"] = "Changed"
        assert refusal(database, acme, data)[0].endswith(
            f"pause it first: penguin campaign pause {word} --tenant acme"
        )


def test_settings_of_a_running_campaign_can_change(database, acme):
    first = apply(database, acme, campaign())
    set_status(database, acme, "q4", "active")
    before = steps_of(database, acme, first.campaign_id)
    result = apply(
        database, acme, campaign(limits={"daily": 50}, senders=[SENDER, BOB], from_name="Sales")
    )
    assert (result.outcome, result.status, result.summary()) == (
        "updated",
        "active",
        "updated campaign q4 (active): settings only",
    )
    with tx(database, acme) as conn:
        assert conn.execute(sa.text("select daily_limit from app.campaign_settings")).scalar() == 50
        assert conn.execute(sa.text("select count(*) from app.campaign_senders")).scalar() == 2
    assert steps_of(database, acme, first.campaign_id) == before


def test_a_paused_campaign_takes_changed_steps(database, acme):
    first = apply(database, acme, campaign())
    set_status(database, acme, "q4", "paused")
    data = campaign()
    data["steps"][0]["email"]["subject"] = "Changed"
    result = apply(database, acme, data)
    assert (result.outcome, result.status, result.changed) == ("updated", "paused", ("intro",))
    assert steps_of(database, acme, first.campaign_id)["intro"].subject == "Changed"


def test_removing_a_step_that_enrollments_stand_on_is_refused_saying_how_many(
    database, acme, tmp_path
):
    upload(database, acme, tmp_path, ROWS)
    first = apply(database, acme, campaign())
    set_status(database, acme, "q4", "paused")
    assert enroll_on(database, acme, first.campaign_id, "cold", status="paused") == 2
    data = campaign()
    data["steps"][2]["else"] = "end"
    data["steps"].pop()
    assert refusal(database, acme, data) == [
        "<text>: steps[cold]: removing this step is refused: 2 enrollments stand on it; keep "
        "the step (it may change) until they have moved on"
    ]
    assert steps_of(database, acme, first.campaign_id)["cold"].removed_at is None


def test_a_step_with_only_finished_enrollments_can_be_removed(database, acme, tmp_path):
    upload(database, acme, tmp_path, ROWS)
    first = apply(database, acme, campaign())
    enroll_on(database, acme, first.campaign_id, "cold", status="completed")
    data = campaign()
    data["steps"][2]["else"] = "end"
    data["steps"].pop()
    assert apply(database, acme, data).removed == ("cold",)


def test_a_completed_campaign_takes_no_change_and_says_to_clone_it(database, acme):
    apply(database, acme, campaign())
    set_status(database, acme, "q4", "completed")
    assert refusal(database, acme, campaign(description="again")) == [
        "<text>: campaign q4 is completed and takes no changes; copy it with "
        "`penguin campaign clone q4 NEW_NAME --tenant acme` and apply to the copy"
    ]


def test_a_sender_of_another_tenant_does_not_exist(database, acme):
    other, _ = create_tenant(database.owner, "globex")
    with tx(database, other) as conn:
        create_sender(conn, "sales@globex.example")
    data = campaign(senders=[SENDER, "sales@globex.example"])
    data["steps"][0]["email"]["sender"] = "nobody@acme.example"
    assert refusal(database, acme, data) == [
        "<text>: senders[#2]: sender account sales@globex.example does not exist in this "
        "tenant; add it with `penguin sender add sales@globex.example --tenant acme`",
        "<text>: steps[intro].email.sender: sender account nobody@acme.example does not exist "
        "in this tenant; add it with `penguin sender add nobody@acme.example --tenant acme`",
    ]


def test_two_tenants_can_each_have_a_campaign_of_the_same_name(database, acme):
    other, _ = create_tenant(database.owner, "globex")
    with tx(database, other) as conn:
        create_sender(conn, "sales@globex.example")  # an address belongs to one tenant
    a = apply(database, acme, campaign())
    b = apply(database, other, campaign(senders=["sales@globex.example"]))
    assert a.campaign_id != b.campaign_id and b.outcome == "created"


def test_a_step_sender_variants_and_a_wait_until_are_stored(database, acme):
    data = campaign(timezone="Europe/Berlin")
    data["steps"][0]["email"] = {
        "variants": [
            {"subject": "A {{ first_name }}", "text": "a", "weight": 3},
            {"subject": "B", "text": "b", "html": "<p>b</p>"},
        ],
        "sender": BOB,
    }
    data["steps"][1]["wait"] = {"until": "2026-12-10T09:00"}
    result = apply(database, acme, data)
    steps = steps_of(database, acme, result.campaign_id)
    assert steps["intro"].variants == [
        {"subject": "A {{ first_name }}", "text": "a", "html": None, "weight": 3},
        {"subject": "B", "text": "b", "html": "<p>b</p>", "weight": 1},
    ]
    assert steps["intro"].subject is None and steps["intro"].body_text is None
    assert steps["pause"].wait_until == datetime(2026, 12, 10, 8, 0, tzinfo=UTC)
    with tx(database, acme) as conn:
        bob = conn.execute(
            sa.text("select id from app.sender_accounts where email = :e"), {"e": BOB}
        ).scalar()
    assert steps["intro"].sender_account_id == bob


def test_a_template_variable_no_contact_of_the_list_has_is_refused(database, acme, tmp_path):
    upload(database, acme, tmp_path, ROWS)
    data = campaign()
    data["steps"][0]["email"] = {
        "subject": "{{ first_name }}, about {{ plan }} at {{ company }}",  # all present
        "text": "{{ favourite_penguin }} in {{ city }}; {{ nickname | default('friend') }}",
    }
    assert refusal(database, acme, data) == [
        "<text>: steps[intro].email.text: no contact of list 'leads' has 'city'; fix the name "
        "or give it a default: {{ city | default('') }}",
        "<text>: steps[intro].email.text: no contact of list 'leads' has 'favourite_penguin'; "
        "fix the name or give it a default: {{ favourite_penguin | default('') }}",
    ]
    data["steps"][0]["email"]["text"] = "{{ favourite_penguin | default('') }}"
    assert apply(database, acme, data).outcome == "created"


def test_a_template_that_would_build_a_huge_value_is_applied_without_building_it(
    database, acme, tmp_path
):
    """Finding a template's variables compiles it, and compiling folds constants: that happens
    in the renderer's worker, under its limits (`tests/engine/test_templates.py` measures it)."""
    upload(database, acme, tmp_path, ROWS)
    data = campaign()
    data["steps"][0]["email"]["text"] = "{{ 'x' * 2**31 }} {{ first_name }} {{ plan }}"
    assert apply(database, acme, data).outcome == "created"


def test_a_template_whose_analysis_runs_over_the_time_limit_is_a_problem_of_its_step(
    database, acme, tmp_path, monkeypatch
):
    upload(database, acme, tmp_path, ROWS)
    spec = cf.parse(step(0, email={"subject": "Hi", "text": "{{ first_name }}" * 3_000}))
    monkeypatch.setattr(templates, "ANALYSIS_LIMITS", RenderLimits(seconds=0.01))
    with pytest.raises(CampaignFileError) as caught:
        apply(database, acme, spec)
    assert caught.value.problems == [
        "<text>: steps[intro].email.text: template took longer than 0.01 s"
    ]


def test_an_empty_or_new_list_skips_the_variable_check_with_a_note(database, acme, tmp_path):
    data = campaign()
    data["steps"][0]["email"]["text"] = "{{ favourite_penguin }}"
    result = apply(database, acme, data)
    assert result.notes == (
        "<text>: list 'leads' does not exist yet: it is created empty; template variables are "
        "checked against its contacts at launch",
    )
    data["description"] = "again"
    assert apply(database, acme, data).notes == (
        "<text>: list 'leads' has no contacts yet: template variables are checked against its "
        "contacts at launch",
    )


def test_a_paused_sender_is_a_note(database, acme):
    with tx(database, acme) as conn:
        from engine.senders import set_sender_active

        set_sender_active(conn, BOB, False, NOW)
    result = apply(database, acme, campaign(senders=[SENDER, BOB]))
    assert result.notes[0] == (
        "<text>: sender account bob@acme.example is paused "
        "(penguin sender resume bob@acme.example --tenant acme)"
    )


def test_apply_export_apply_is_a_no_op(database, acme):
    with tx(database, acme) as conn:
        create_sender(conn, "alice@acme.example")
    spec = cf.load(EXAMPLE)
    created = apply(database, acme, spec)
    with tx(database, acme) as conn:
        text = cf.export(conn, "q4-outreach")
    assert text == cf.dump(spec.data)
    again = cf.loads(text, "exported.yaml")
    assert again.data == spec.data and again.sha256 == spec.sha256
    assert apply(database, acme, again).outcome == "unchanged"
    assert created.outcome == "created"
    # the printed file keeps the issue's key order and every default
    assert [line.split(":")[0] for line in text.splitlines() if line[:1].isalpha()] == list(
        cf.TOP_KEYS
    )


def test_export_names_an_unknown_or_pre_file_campaign(database, acme):
    with tx(database, acme) as conn:
        conn.execute(
            sa.text(
                "insert into app.campaigns (tenant_id, name) "
                "values (app.current_tenant_id(), 'old')"
            )
        )
        with pytest.raises(CampaignFileError) as unknown:
            cf.export(conn, "ghost")
        with pytest.raises(CampaignFileError) as old:
            cf.export(conn, "old")
    assert unknown.value.problems == [
        "no campaign named 'ghost' in this tenant; see `penguin campaign list --tenant acme`"
    ]
    assert old.value.problems == [
        "campaign old was made before campaign files and has no stored definition; write a "
        "file for it and apply it"
    ]


def test_clone_copies_the_definition_as_a_new_draft(database, acme, tmp_path):
    upload(database, acme, tmp_path, ROWS)
    first = apply(database, acme, campaign())
    set_status(database, acme, "q4", "active")
    enroll_on(database, acme, first.campaign_id, "intro")
    with tx(database, acme) as conn:
        copy_ = cf.clone(conn, "q4", "q4-again", NOW)
        exported = cf.export(conn, "q4-again")
        enrolled = conn.execute(
            sa.text("select count(*) from app.campaign_contacts where campaign_id = :id"),
            {"id": copy_.campaign_id},
        ).scalar()
    assert (copy_.outcome, copy_.status, copy_.name) == ("created", "draft", "q4-again")
    assert enrolled == 0
    original, clone_ = (
        steps_of(database, acme, first.campaign_id),
        steps_of(database, acme, copy_.campaign_id),
    )
    assert list(original) == list(clone_)
    assert not {s.id for s in original.values()} & {s.id for s in clone_.values()}
    assert cf.loads(exported).data == {**cf.parse(campaign()).data, "name": "q4-again"}
    with tx(database, acme) as conn:
        with pytest.raises(CampaignFileError) as taken:
            cf.clone(conn, "q4", "q4-again", NOW)
        with pytest.raises(CampaignFileError) as bad_name:
            cf.clone(conn, "q4", "", NOW)
    assert taken.value.problems == [
        "clone of q4: name: campaign q4-again already exists; choose another name"
    ]
    assert bad_name.value.problems == ["clone of q4: name: must not be empty"]


def test_approval_is_for_the_definition_as_applied(database, acme):
    result = apply(database, acme, campaign(approval="required"))
    cid = result.campaign_id
    with tx(database, acme) as conn:
        assert cf.approval_state(conn, cid) == (
            False,
            "approval is required and nobody has approved it yet; "
            "penguin campaign approve q4 --by WHO --tenant acme",
        )
        decision = cf.approve(conn, "q4", "compliance@acme.example", NOW, "fine")
        assert (decision.status, decision.spec_sha256, decision.note) == (
            "approved",
            cf.parse(campaign(approval="required")).sha256,
            None,
        )
        assert cf.approval_state(conn, cid) == (
            True,
            "approved by compliance@acme.example at 2026-11-20 10:00 UTC",
        )
    apply(database, acme, campaign(approval="required", description="changed after approval"))
    with tx(database, acme) as conn:
        assert cf.approval_state(conn, cid) == (
            False,
            "approval is required: the definition changed since the last decision (approved by "
            "compliance@acme.example); penguin campaign approve q4 --by WHO --tenant acme",
        )
        later = NOW + timedelta(hours=1)
        cf.reject(conn, "q4", "legal", "no discounts in the subject", later)
        assert cf.approval_state(conn, cid) == (
            False,
            "rejected by legal at 2026-11-20 11:00 UTC: no discounts in the subject; change the "
            "file, apply it, then penguin campaign approve q4 --by WHO --tenant acme",
        )
        cf.approve(conn, "q4", "legal", later + timedelta(minutes=5))
        assert cf.approval_state(conn, cid)[0] is True


def test_an_approval_and_a_rejection_at_the_same_moment_count_as_rejected(database, acme):
    cid = apply(database, acme, campaign(approval="required")).campaign_id
    with tx(database, acme) as conn:
        cf.approve(conn, "q4", "a", NOW)
        cf.reject(conn, "q4", "b", "no", NOW)
        assert cf.approval_state(conn, cid)[0] is False


def test_a_campaign_without_required_approval_is_approved_and_an_approval_says_so(database, acme):
    cid = apply(database, acme, campaign()).campaign_id
    with tx(database, acme) as conn:
        assert cf.approval_state(conn, cid) == (True, "approval is not required")
        assert cf.approve(conn, "q4", "me", NOW).note == (
            "this campaign does not require approval (approval: none); recorded anyway"
        )


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (
            lambda conn: cf.reject(conn, "q4", "legal", "  ", NOW),
            "campaign q4: --comment: a rejection needs a comment saying what to change",
        ),
        (lambda conn: cf.approve(conn, "q4", "", NOW), "campaign q4: --by: must not be empty"),
        (
            lambda conn: cf.approve(conn, "ghost", "me", NOW),
            "campaign ghost: no such campaign in this tenant; "
            "see `penguin campaign list --tenant acme`",
        ),
    ],
)
def test_a_decision_needs_a_campaign_a_person_and_for_a_rejection_a_reason(
    database, acme, call, expected
):
    apply(database, acme, campaign(approval="required"))
    with tx(database, acme) as conn:
        with pytest.raises(CampaignFileError) as caught:
            call(conn)
    assert caught.value.problems == [expected]


def test_the_campaign_list_counts_steps_enrollments_and_sends_of_the_local_day(
    database, acme, tmp_path
):
    upload(database, acme, tmp_path, ROWS)
    first = apply(database, acme, campaign(timezone="Pacific/Auckland"))
    enroll_on(database, acme, first.campaign_id, "intro")
    with tx(database, acme) as conn:
        # NOW is 23:00 in Auckland (UTC+13): its local day began 23 hours before.
        # One message per (enrollment, step): each row on its own step.
        for key, minutes_ago, status, attempts in (
            ("intro", 0, "sent", 1),
            ("pause", 23 * 60, "failed", 1),  # at local midnight, failed at SMTP: counts
            ("warm?", 30, "failed", 0),  # failed before any SMTP conversation: does not count
            ("warm", 23 * 60 + 1, "sent", 1),  # a minute before local midnight: yesterday
        ):
            conn.execute(
                sa.text(
                    """
                    insert into app.sent_emails
                        (tenant_id, campaign_contact_id, campaign_id, step_id, contact_id,
                         recipient_email, subject, message_id, status, attempts, queued_at)
                    select cc.tenant_id, cc.id, cc.campaign_id, s.id, cc.contact_id, 'x@y.z',
                           's', gen_random_uuid()::text, :status, :attempts, :queued_at
                    from app.campaign_contacts cc
                    join app.campaign_steps s on s.campaign_id = cc.campaign_id
                    where s.key = :key
                    limit 1
                    """
                ),
                {
                    "key": key,
                    "status": status,
                    "attempts": attempts,
                    "queued_at": NOW - timedelta(minutes=minutes_ago),
                },
            )
        (row,) = cf.list_campaigns(conn, NOW)
    assert (row.name, row.status, row.list_name, row.steps, row.enrolled) == (
        "q4",
        "draft",
        "leads",
        5,
        2,
    )
    assert (row.sent_today, row.daily_limit) == (2, 500)


def test_resuming_a_sender_makes_the_enrollments_waiting_for_one_due(database, acme, tmp_path):
    from engine.senders import list_senders, set_sender_active

    upload(database, acme, tmp_path, [*ROWS, ["grace@example.com", "Grace", "", "Navy", "pro"]])
    first = apply(database, acme, campaign(senders=[BOB]))
    enroll_on(database, acme, first.campaign_id, "intro")
    later = NOW + timedelta(days=1)
    with tx(database, acme) as conn:
        assert set_sender_active(conn, "Bob@Acme.example", False, NOW) == (BOB, 0)
        assert [s.is_active for s in list_senders(conn, NOW) if s.email == BOB] == [False]
        conn.execute(
            sa.text(
                """
                update app.campaign_contacts cc set next_run_at = :later,
                    wait_reason = case c.email when 'alan@example.com' then 'window'
                                               else 'sender paused' end,
                    lease_owner = case c.email when 'grace@example.com' then 'worker' end,
                    lease_expires_at = case c.email when 'grace@example.com' then :later end
                from app.contacts c where c.id = cc.contact_id
                """
            ),
            {"later": later},
        )
        assert set_sender_active(conn, BOB, True, NOW) == (BOB, 1)  # not the leased one
        rows = conn.execute(
            sa.text(
                """
                select c.email, cc.next_run_at, cc.wait_reason from app.campaign_contacts cc
                join app.contacts c on c.id = cc.contact_id order by c.email
                """
            )
        ).all()
        assert set_sender_active(conn, "ghost@acme.example", True, NOW) is None
    assert [tuple(r) for r in rows] == [
        ("ada@example.com", NOW, None),
        ("alan@example.com", later, "window"),
        ("grace@example.com", later, "sender paused"),
    ]
