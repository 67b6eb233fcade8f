"""A template that raises or runs away ends only its own item: at launch a `CampaignError`
naming the step, the part and the contact; at send time only that contact's enrollment."""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from datetime import timedelta

import psutil
import pytest
import sqlalchemy as sa

from engine.campaigns import (
    CampaignError,
    Step,
    create_campaign,
    launch_campaign,
    validate_campaign,
)
from engine.db import tenant_transaction
from engine.ingest import ingest_file
from engine.senders import create_sender
from engine.sending.scheduler import Config, send_due
from engine.templates import (
    MIB,
    Renderer,
    RenderLimits,
    TemplateRenderError,
    check_syntax,
    contact_context,
    template_variables,
)
from engine.tenants import create_tenant
from tests.conftest import NOW
from tests.factories import people, seed_tenant, write_csv

#: Small limits keep the runaway cases quick; the defaults are checked separately.
FAST = RenderLimits(seconds=0.5, memory_bytes=256 * MIB)

#: Each way a template can fail, and what the reason says.
ABUSE = {
    "division by zero": ("{{ 1/0 }}", "ZeroDivisionError: division by zero"),
    "a type error": ("{{ 'a' + 1 }}", 'TypeError: can only concatenate str (not "int") to str'),
    "a power too large": ("{{ 10 ** (10 ** 10) }}", "template would compute a number of about"),
    "a float overflow": ("{{ 10.0 ** 400 }}", "OverflowError"),
    "nested loops": (
        "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
        "template took longer than 0.5 s",
    ),
    "a huge string": (
        "{{ 'x' * 10**10 }}",
        "template would build a string of 10,000,000,000 characters (limit 262,144)",
    ),
    "chained replace": (
        "{{ ('x' * 1000) | replace('x', 'x' * 1000) | replace('x', 'x' * 1000) }}",
        "template would build a string of 1,000,000 characters",
    ),
    "a wide center": ("{{ 'x' | center(10**9) }}", "a string of 1,000,000,000 characters"),
    "namespace doubling": (
        "{% set ns = namespace(s='x') %}{% for i in range(64) %}"
        "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}",
        "template needs too much memory (over 256 MiB)",
    ),
    "a huge output": (
        "{% for i in range(100000) %}xxxxxxxxxx{% endfor %}",
        "template output is over the limit of 256 KiB",
    ),
}


def _only_for(address: str, source: str) -> str:
    return f"Hello {{{{ first_name }}}}{{% if email == '{address}' %}}{source}{{% endif %}}"


# -- the renderer ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ABUSE, ids=list(ABUSE))
def test_a_template_that_raises_or_runs_away_fails_with_its_reason_and_the_next_item_renders(
    case,
):
    source, reason = ABUSE[case]
    with Renderer(FAST) as renderer:
        started = time.monotonic()
        with pytest.raises(TemplateRenderError) as caught:
            renderer.render(
                {"subject": "Hi", "body_text": source, "body_html": None}, {}, where="step 2"
            )
        assert str(caught.value).startswith("step 2 body_text: ")
        assert reason in str(caught.value)
        assert time.monotonic() - started < FAST.seconds + 2
        after = renderer.render({"subject": "Hi {{ name }}"}, {"name": "Ann"}, where="step 2")
        assert after == {"subject": "Hi Ann"}


def test_the_part_that_failed_is_named():
    with Renderer(FAST) as renderer:
        with pytest.raises(TemplateRenderError, match=r"^step 1 subject: ZeroDivisionError"):
            renderer.render({"subject": "{{ 1/0 }}", "body_text": "fine"}, {}, where="step 1")
        with pytest.raises(TemplateRenderError, match=r"^step 1 body_html: template took longer"):
            renderer.render(
                {"subject": "s", "body_text": "b", "body_html": ABUSE["nested loops"][0]},
                {},
                where="step 1",
            )


def test_a_misspelt_variable_is_still_an_error():
    with Renderer(FAST) as renderer:
        with pytest.raises(TemplateRenderError, match="UndefinedError: 'frist_name' is undefined"):
            renderer.render({"subject": "Hi {{ frist_name }}"}, {"first_name": "Ann"})


@pytest.mark.parametrize("first_name", [None, ""])
def test_a_contact_without_a_first_name_gets_the_templates_default(first_name):
    contact = {"email": "ann@example.com", "first_name": first_name, "attributes": {}}
    with Renderer(FAST) as renderer:
        texts = renderer.render(
            {
                "subject": "Quick question, {{ first_name | default('there') }}",
                "body_text": "Hi {{ first_name }}!{% if not company %} No company.{% endif %}",
            },
            contact_context(contact),
        )
    assert texts == {"subject": "Quick question, there", "body_text": "Hi ! No company."}


def test_a_contact_with_a_first_name_keeps_it_over_the_default():
    contact = {"email": "ann@example.com", "first_name": "Ann", "attributes": {}}
    with Renderer(FAST) as renderer:
        texts = renderer.render(
            {"subject": "Quick question, {{ first_name | default('there') }}"},
            contact_context(contact),
        )
    assert texts == {"subject": "Quick question, Ann"}


def test_a_missing_field_used_as_a_value_is_an_error_naming_it():
    contact = {"email": "ann@example.com", "first_name": None, "attributes": {}}
    with Renderer(FAST) as renderer:
        with pytest.raises(TemplateRenderError, match="'first_name' is undefined"):
            renderer.render({"subject": "{{ first_name.upper() }}"}, contact_context(contact))


def test_a_runaway_template_ends_within_the_time_limit_and_a_new_worker_takes_over():
    with Renderer(RenderLimits(seconds=1)) as renderer:
        renderer.render({"subject": "warm-up"}, {})
        first = renderer.worker_pid
        started = time.monotonic()
        with pytest.raises(TemplateRenderError, match="template took longer than 1 s"):
            renderer.render({"subject": ABUSE["nested loops"][0]}, {})
        assert time.monotonic() - started < 2.5
        assert not psutil.pid_exists(first) or psutil.Process(first).status() == "zombie"
        assert renderer.render({"subject": "again"}, {}) == {"subject": "again"}
        assert renderer.worker_pid != first and renderer.started == 2


def test_memory_stays_bounded_in_the_worker_not_the_caller():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with Renderer(RenderLimits(memory_bytes=256 * MIB)) as renderer:
        for _ in range(3):
            with pytest.raises(TemplateRenderError, match="template needs too much memory"):
                renderer.render({"body_text": ABUSE["namespace doubling"][0]}, {})
        assert renderer.render({"subject": "ok"}, {}) == {"subject": "ok"}
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 * 1024


def test_one_worker_serves_every_item_and_ends_with_the_renderer():
    with Renderer() as renderer:
        for i in range(200):
            assert renderer.render({"subject": "{{ i }}"}, {"i": i}) == {"subject": str(i)}
        pid = renderer.worker_pid
        assert renderer.started == 1
    assert renderer.worker_pid is None
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"


def test_a_renderer_with_nothing_to_render_starts_no_process():
    with Renderer() as renderer:
        pass
    assert renderer.started == 0


def test_limits_are_validated():
    assert RenderLimits() == RenderLimits(
        seconds=2, output_bytes=256 * 1024, memory_bytes=512 * MIB
    )
    for bad in ({"seconds": 0}, {"output_bytes": 10}, {"memory_bytes": 1024}):
        with pytest.raises(ValueError, match="render"):
            RenderLimits(**bad)


# -- launch ------------------------------------------------------------------------------------


def _draft_campaign_with_contacts(database, tmp_path, steps, rows):
    """A tenant whose draft campaign's list already holds `rows` (launch comes after)."""
    tenant_id, _ = create_tenant(database.owner, "acme")
    with tenant_transaction(database.app, tenant_id) as conn:
        sender = create_sender(conn, "sales@acme.example", "Acme Sales", min_gap_seconds=0)
        campaign = create_campaign(
            conn, "outreach", NOW, list_name="leads", sender_id=sender, steps=steps
        )
    ingest_file(database.app, tenant_id, write_csv(tmp_path / "leads.csv", rows), "leads", NOW)
    return tenant_id, campaign


def _rows_with(bad: str) -> list[list[str]]:
    return [*people("ok", 2), [bad, "Bad", "Actor", "Evil Inc", "pro"]]


@pytest.mark.parametrize("case", ABUSE, ids=list(ABUSE))
def test_launch_refuses_a_template_that_fails_for_a_contact_naming_step_part_and_contact(
    database, tmp_path, case
):
    source, reason = ABUSE[case]
    steps = [
        Step("email", subject="First", body_text="Hello {{ first_name }}"),
        Step("email", subject="Second", body_text=_only_for("bad@example.com", source)),
    ]
    tenant_id, campaign = _draft_campaign_with_contacts(
        database, tmp_path, steps, _rows_with("bad@example.com")
    )
    with pytest.raises(CampaignError) as caught:
        with tenant_transaction(database.app, tenant_id) as conn:
            launch_campaign(conn, campaign, NOW, limits=FAST)
    message = str(caught.value)
    assert message.startswith("step 2 (email) body_text: "), message
    assert reason in message and message.endswith("(contact bad@example.com)")
    with tenant_transaction(database.app, tenant_id) as conn:
        status = conn.execute(sa.text("select status from app.campaigns")).scalar_one()
    assert status == "draft"


def test_launch_says_it_checked_every_contact_of_a_small_list(database, tmp_path):
    steps = [Step("email", subject="Hi {{ first_name }}", body_text="Hello {{ company }}")]
    tenant_id, campaign = _draft_campaign_with_contacts(database, tmp_path, steps, people("ok", 3))
    with tenant_transaction(database.app, tenant_id) as conn:
        check = launch_campaign(conn, campaign, NOW)
    assert (check.contacts_checked, check.contacts_on_list, check.sampled) == (3, 3, False)
    assert check.summary() == "1 email step(s) rendered: checked all 3 contacts"


def test_launch_of_a_large_list_checks_a_stated_sample(database, tmp_path):
    steps = [Step("email", subject="Hi {{ first_name }}", body_text="Hello {{ company }}")]
    tenant_id, campaign = _draft_campaign_with_contacts(database, tmp_path, steps, people("ok", 5))
    with tenant_transaction(database.app, tenant_id) as conn:
        check = validate_campaign(conn, campaign, sample_size=2)
    assert check.summary() == "1 email step(s) rendered: checked 2 of 5 contacts (a sample)"


def test_a_sampled_launch_error_says_it_came_from_a_sample(database, tmp_path):
    steps = [Step("email", subject="Hi", body_text="{{ 1/0 }}")]
    tenant_id, campaign = _draft_campaign_with_contacts(database, tmp_path, steps, people("ok", 5))
    with pytest.raises(CampaignError, match=r"checked 2 of 5 contacts \(a sample\)\)$"):
        with tenant_transaction(database.app, tenant_id) as conn:
            validate_campaign(conn, campaign, sample_size=2)


# -- send time ---------------------------------------------------------------------------------


def _enrollments(database, tenant_id):
    with tenant_transaction(database.app, tenant_id) as conn:
        return {
            r.email: (r.status, r.exit_reason)
            for r in conn.execute(
                sa.text(
                    "select c.email, cc.status, cc.exit_reason from app.campaign_contacts cc "
                    "join app.contacts c on c.id = cc.contact_id"
                )
            )
        }


@pytest.mark.parametrize("case", ABUSE, ids=list(ABUSE))
def test_at_send_time_a_failing_template_ends_only_its_enrollment_and_the_batch_is_sent(
    database, smtp_server, tmp_path, case
):
    """The contact came after launch, so launch could not see it: its enrollment exits."""
    source, reason = ABUSE[case]
    steps = [Step("email", subject="Hi", body_text=_only_for("bad@example.com", source))]
    tenant = seed_tenant(
        database, "acme", NOW, tmp_path, steps=steps, rows=_rows_with("bad@example.com")
    )
    report = send_due(database.app, smtp_server.server(), NOW, config=Config(render=FAST))
    assert report.sent == 2
    assert sorted(m["To"] for m in smtp_server.messages) == [
        "ok0@example.com",
        "ok1@example.com",
    ]
    enrollments = _enrollments(database, tenant.tenant_id)
    status, exit_reason = enrollments.pop("bad@example.com")
    assert status == "exited"
    assert exit_reason.startswith("template error: step 1 body_text: ") and reason in exit_reason
    assert set(enrollments.values()) == {("completed", None)}
    assert any("bad@example.com" in e and reason in e for e in report.errors)
    with tenant_transaction(database.app, tenant.tenant_id) as conn:
        messages = conn.execute(
            sa.text("select recipient_email, status, attempts from app.sent_emails")
        ).all()
    # The failing one's row was queued, then failed before any SMTP conversation.
    assert sorted(tuple(m) for m in messages) == [
        ("bad@example.com", "failed", 0),
        ("ok0@example.com", "sent", 1),
        ("ok1@example.com", "sent", 1),
    ]


def test_a_batch_of_slow_templates_renders_within_its_lease_and_defers_the_rest(
    database, smtp_server, tmp_path
):
    """Each of these takes the whole time limit; a batch stops rendering after a third of its
    lease and releases the rest, which later batches of the run claim with fresh leases."""
    loop = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"
    steps = [Step("email", subject="Hi", body_text=loop)]
    tenant = seed_tenant(database, "acme", NOW, tmp_path, steps=steps)  # three contacts
    config = Config(render=FAST, lease=timedelta(seconds=1.2))  # budget 0.4 s: one item
    report = send_due(database.app, smtp_server.server(), NOW, config=config)
    assert report.claimed == 3 + 2 + 1  # each batch rendered one and released the others
    reasons = {reason for _, reason in _enrollments(database, tenant.tenant_id).values()}
    assert reasons == {"template error: step 1 body_text: template took longer than 0.5 s"}
    assert smtp_server.messages == []


def test_an_error_quoting_a_huge_value_is_one_short_printable_line():
    source = "{% set s = 'x' * 90000 ~ '\x1b[2J' %}{{ {}[s].y }}"
    with Renderer(FAST) as renderer, pytest.raises(TemplateRenderError) as raised:
        renderer.render({"body_text": source}, {}, where="step 1")
    message = str(raised.value)
    assert message.startswith("step 1 body_text: UndefinedError: ")
    assert len(message) < 400 and "\x1b" not in message


def test_checking_a_template_runs_in_the_renderers_worker_under_its_time_limit():
    with Renderer(RenderLimits(seconds=0.01)) as renderer:
        with pytest.raises(TemplateRenderError) as caught:
            check_syntax("{{ a }}" * 3_000, where="step 1 body_text", renderer=renderer)
        assert str(caught.value) == "step 1 body_text: template took longer than 0.01 s"
    with Renderer() as renderer:  # the next template gets a new worker
        assert template_variables("{{ a }}{{ b | default('') }}", renderer=renderer) == {"a"}
        assert renderer.started == 1


def test_a_process_that_checked_a_template_exits_even_when_it_ignores_sigterm():
    """The shared checking worker ends with its process: a command run by a parent that ignores
    SIGTERM (a test runner's worker does, and the children inherit it) once hung at exit,
    multiprocessing's handler waiting for a worker its SIGTERM could not end."""
    script = (
        "import signal\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "from engine.templates import check_syntax\n"
        "check_syntax('{{ name }}')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_constant_folding_while_checking_builds_nothing_in_the_calling_process():
    """Compiling folds constant expressions: `'x' * 2**29` would be built (512 MiB) by whoever
    compiles the template. A process of its own measures its peak memory: VmHWM, its own
    address space's (getrusage's ru_maxrss keeps the peak of the process that started it,
    across exec: a test runner's large worker)."""
    script = (
        "import re\n"
        "from engine.templates import check_syntax, template_variables\n"
        "source = \"{{ 'x' * 2**29 }}{{ 'z' | center(2**29) }}{{ name }}\"\n"
        "check_syntax(source)\n"
        "assert template_variables(source) == {'name'}\n"
        "status = open('/proc/self/status').read()\n"
        "print(re.search(r'VmHWM:\\s+(\\d+) kB', status).group(1))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert int(done.stdout) * 1024 < 256 * MIB


def test_a_template_that_cannot_compile_is_refused_when_checked():
    with pytest.raises(TemplateRenderError) as caught:
        check_syntax("{{ name | shout }}", where="step 1 subject")
    assert str(caught.value) == ("step 1 subject: TemplateAssertionError: No filter named 'shout'.")
