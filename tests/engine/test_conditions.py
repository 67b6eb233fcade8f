"""Conditions and actions: what validation says, what the SQL binds, and that the engine's SQL
and the forecast's Python decide every condition the same way for every contact."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.db import tenant_transaction
from engine.ingest.store import MAX_LIST_NAME
from engine.sequence import conditions
from engine.sequence.conditions import ConditionError, evaluate, to_sql, validate, validate_action
from engine.tenants import create_tenant
from tests.engine.campaign_rows import add_campaign, add_contact, add_event

STEP_KEYS = {"intro", "follow-up", "warm?"}

# -- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cond",
    [
        {"opened": "intro"},
        {"not_replied": "any"},
        {"lead_score": {"gte": 50, "lt": 90}},
        {"field": "company", "eq": "Acme"},
        {"field": "Plan", "in": ["gold", "silver", 3]},
        {"field": "tags", "contains": "vip"},
        {"field": "country", "exists": False},
        {"field": "Seats", "gt": 2.5},
        {"all": [{"clicked": "intro"}, {"any": [{"replied": "any"}, {"field": "city", "ne": 1}]}]},
    ],
)
def test_valid_conditions_have_no_problems(cond):
    assert validate(cond, STEP_KEYS) == []


@pytest.mark.parametrize(
    ("cond", "problem"),
    [
        ({"opened": "outro"}, "condition.opened: no step 'outro' in this campaign"),
        ({"opened": 3}, "condition.opened: a step id or `any`, not 3"),
        ({"openned": "intro"}, "condition: unknown condition 'openned'"),
        ({"opened": "intro", "clicked": "intro"}, "condition: one condition per mapping"),
        ({"all": []}, "condition.all: a non-empty list of conditions"),
        ({"any": [{"opened": "intro"}, "x"]}, "condition.any[1]: a condition is a mapping"),
        ({"lead_score": {"gte": "50"}}, 'condition.lead_score.gte: a number, not "50"'),
        ({"lead_score": {"between": 5}}, "condition.lead_score.between: unknown comparison"),
        ({"field": "city", "like": "Ber%"}, "condition: unknown operator like for field 'city'"),
        ({"field": "city"}, "condition: field 'city' needs exactly one operator"),
        ({"field": "city", "eq": "a", "ne": "b"}, "needs exactly one operator"),
        ({"field": "", "eq": "a"}, "condition.field: a contact field or attribute name"),
        ({"field": "city", "eq": None}, "condition.eq: a value, not null (to test for a missing"),
        ({"field": "city", "in": []}, "condition.in: a non-empty list of values"),
        ({"field": "city", "in": [["x"]]}, "condition.in[0]: a text or a number"),
        ({"field": "city", "contains": 42}, "condition.contains: a non-empty text (quote numbers"),
        ({"field": "city", "exists": "yes"}, 'condition.exists: true or false, not "yes"'),
        ({"field": "city", "gt": True}, "condition.gt: a number or a text, not true"),
        ({"field": "Seats", "gt": float("nan")}, "condition.gt: a number or a text"),
        ({"field": "tags", "eq": "vip"}, "condition.eq: tags take contains, in, not_in, exists"),
        ("opened", "condition: a condition is a mapping such as {opened: intro}"),
        ({"all": [{"any": [{"clicked": "nope"}]}]}, "condition.all[0].any[0].clicked: no step"),
        ({"field": "name", "eq": "\x00"}, 'condition.eq: "\\u0000" holds a NUL character'),
        (
            {"any": [{"field": "city", "in": ["a\x00"]}]},
            'condition.any[0].in[0]: "a\\u0000" holds a NUL',
        ),
        ({"field": "ci\x00ty", "exists": True}, 'condition.field: "ci\\u0000ty" holds a NUL'),
    ],
)
def test_each_problem_names_its_key_path(cond, problem):
    problems = validate(cond, STEP_KEYS)
    assert any(problem in p for p in problems), problems


def test_all_problems_are_reported_at_once():
    problems = validate({"all": [{"opened": "x"}, {"field": "a", "in": []}]}, STEP_KEYS)
    assert len(problems) == 2


def test_to_sql_and_evaluate_refuse_an_invalid_condition():
    with pytest.raises(ConditionError, match="no step 'x'"):
        to_sql({"opened": "x"}, {"intro": uuid.uuid4()})
    with pytest.raises(ConditionError, match="unknown condition"):
        evaluate({"seen": "intro"}, {}, set())


@pytest.mark.parametrize(
    ("action", "problem"),
    [
        ({"tag": ""}, "action.tag: a tag, not"),
        ({"tag": "a", "untag": "b"}, "action: exactly one of tag, untag, set"),
        ({"label": "x"}, "action: unknown action 'label'"),
        ({"set": {}}, "action.set: a mapping of fields to values"),
        ({"set": {"email": "x@y"}}, "action.set.email: email cannot be set by an action"),
        ({"set": {"tags": ["x"]}}, "action.set.tags: tags cannot be set by an action (use tag"),
        (
            {"set": {"lead_score": "high"}},
            'action.set.lead_score: a whole number or null, not "high"',
        ),
        ({"set": {"lead_score": 2**31}}, "action.set.lead_score: a whole number"),
        ({"set": {"Plan": {"a": 1}}}, "action.set.Plan: a text, a number, true/false or null"),
        (
            {"set": {"timezone": "Mars/Olympus"}},
            'action.set.timezone: "Mars/Olympus" is not an IANA',
        ),
        ({"add_to_list": "x" * (MAX_LIST_NAME + 1)}, "action.add_to_list: at most 200 characters"),
        ({"remove_from_list": None}, "action.remove_from_list: a list name, not null"),
        ({"exit": 5}, "action.exit: a reason, not 5"),
        ({"tag": "vip\x00"}, 'action.tag: "vip\\u0000" holds a NUL'),
        ({"set": {"Plan\x00": "x"}}, 'action.set: the key "Plan\\u0000" holds a NUL character'),
        (["tag", "x"], "action: exactly one of"),
    ],
)
def test_each_action_problem_names_its_key(action, problem):
    problems = validate_action(action)
    assert any(problem in p for p in problems), problems


@pytest.mark.parametrize(
    "action",
    [
        {"tag": "cold"},
        {"untag": "cold"},
        {"set": {"company": "Acme", "lead_score": None, "Plan": "gold", "vip": True}},
        {"add_to_list": "Q4 nurture"},
        {"remove_from_list": "Q4"},
        {"exit": "not a fit"},
    ],
)
def test_valid_actions_have_no_problems(action):
    assert validate_action(action) == []


def test_list_names_of_actions_have_the_ingest_limit():
    assert conditions.MAX_LIST_NAME == MAX_LIST_NAME


# -- the SQL -------------------------------------------------------------------------------------


def test_values_and_attribute_names_are_bound_never_spliced():
    hostile = "x'); drop table app.contacts; --"
    sql, params = to_sql(
        {"all": [{"field": hostile, "eq": hostile}, {"field": "company", "contains": hostile}]},
        {},
    )
    assert hostile not in sql
    assert list(params.values()).count(hostile) == 3


def test_parameter_names_of_two_fragments_never_collide():
    step = {"intro": uuid.uuid4()}
    first, first_params = to_sql({"opened": "intro"}, step)
    second, second_params = to_sql({"opened": "intro"}, step)
    assert not set(first_params) & set(second_params)
    assert first != second


# -- SQL and Python agree ------------------------------------------------------------------------

TEXTS = ["Acme", "acme", "ACME Corp", "Ärger", "straße", "İstanbul", "Berlin", "", "b", "Z"]
NUMERIC_TEXTS = ["42", " 7 ", "3.5", "-0.5", "1e3", ".5", "5.", "NaN", "0x1F", "1_000", "1e5000"]
NUMBERS = [0, 3, 7, 42, 50, 1000, -1, 2.5, 3.5, 0.5]
ATTRIBUTES = ["Plan", "Seats", "Missing", "Flag"]
FIELDS = ["email", "first_name", "company", "city", "country", "lead_score", "status", *ATTRIBUTES]
TAGS = ["vip", "cold", "VIP", "warm"]

# (first_name, company, city, country, lead_score, status, tags, attributes)
PEOPLE = [
    ("Ann", "Acme", "Berlin", "DE", 80, "active", ["vip"], {"Plan": "gold", "Seats": "42"}),
    ("Bob", "acme", None, "", 50, "active", [], {"Plan": "silver", "Seats": " 7 "}),
    ("Cid", "ACME Corp", "berlin", None, None, "active", ["cold", "VIP"], {"Seats": "3.5"}),
    ("Dee", "Ärger", "İstanbul", "TR", 7, "bounced", ["warm"], {"Seats": "NaN", "Flag": True}),
    ("Eve", "straße", "STRASSE", "DE", -1, "active", [], {"Seats": "0x1F", "Plan": ""}),
    ("Fay", None, "Z", "b", 0, "active", ["vip", "warm"], {"Seats": "1_000", "Plan": "Gold"}),
    ("Gus", "Zeta", "a", "Z", 1000, "active", [], {"Seats": "1e5000", "Flag": False}),
    ("Hal", "", "", "", 42, "active", ["cold"], {"Seats": "1e3", "Plan": 3}),
    (None, "Acme", "Ärger", "de", 3, "active", [], {"Seats": ".5"}),
    ("Ivy", "b", "b", "B", 2, "active", [], {"Seats": "-0.5", "Plan": "acme"}),
]

# (person index, event type, step key or None)
EVENTS = [
    (0, "open", "intro"),
    (0, "click", "intro"),
    (1, "open", "follow-up"),
    (2, "reply", None),
    (3, "open", "intro"),
    (5, "click", "follow-up"),
    (6, "reply", "intro"),
]


def _values(numbers_only: bool = False) -> st.SearchStrategy:
    numbers = st.sampled_from(NUMBERS) | st.integers(-5, 100)
    if numbers_only:
        return numbers
    # any text but NUL, which PostgreSQL's text cannot hold (validate refuses it)
    texts = st.text(st.characters(exclude_characters="\x00"), max_size=3)
    return numbers | st.sampled_from(TEXTS + NUMERIC_TEXTS) | texts | st.booleans()


def _field_condition() -> st.SearchStrategy:
    def for_field(name: str) -> st.SearchStrategy:
        return st.one_of(
            st.sampled_from(["eq", "ne"]).flatmap(
                lambda op: _values().map(lambda v: {"field": name, op: v})
            ),
            st.sampled_from(["gt", "gte", "lt", "lte"]).flatmap(
                lambda op: (
                    _values(numbers_only=True) | st.sampled_from(TEXTS + NUMERIC_TEXTS)
                ).map(lambda v: {"field": name, op: v})
            ),
            st.sampled_from(["in", "not_in"]).flatmap(
                lambda op: st.lists(_values(), min_size=1, max_size=3).map(
                    lambda v: {"field": name, op: v}
                )
            ),
            st.sampled_from(TEXTS[:-3] + ["cme", "RASS", "e", "ist"]).map(
                lambda v: {"field": name, "contains": v}
            ),
            st.booleans().map(lambda v: {"field": name, "exists": v}),
        )

    tags = st.one_of(
        st.sampled_from(TAGS).map(lambda v: {"field": "tags", "contains": v}),
        st.booleans().map(lambda v: {"field": "tags", "exists": v}),
        st.sampled_from(["in", "not_in"]).flatmap(
            lambda op: st.lists(st.sampled_from(TAGS), min_size=1).map(
                lambda v: {"field": "tags", op: v}
            )
        ),
    )
    return st.sampled_from(FIELDS).flatmap(for_field) | tags


LEAVES = st.one_of(
    st.tuples(
        st.sampled_from(list(conditions.ENGAGEMENT)),
        st.sampled_from([*sorted(STEP_KEYS), "any"]),
    ).map(lambda kv: {kv[0]: kv[1]}),
    st.dictionaries(
        st.sampled_from(conditions.COMPARISONS), _values(numbers_only=True), min_size=1
    ).map(lambda ops: {"lead_score": ops}),
    _field_condition(),
)
CONDITIONS = st.recursive(
    LEAVES,
    lambda children: st.one_of(
        st.lists(children, min_size=1, max_size=3).map(lambda c: {"all": c}),
        st.lists(children, min_size=1, max_size=3).map(lambda c: {"any": c}),
    ),
    max_leaves=6,
)


@pytest.fixture
def population(database, now):
    """A campaign with an enrollment for each of PEOPLE and their EVENTS; a function that
    decides a condition for everyone in SQL and in Python."""
    tenant_id, _ = create_tenant(database.owner, "acme")
    with tenant_transaction(database.app, tenant_id) as conn:
        campaign = add_campaign(
            conn,
            "c",
            now,
            [{"id": key, "wait": timedelta(days=1)} for key in sorted(STEP_KEYS)],
        )
        ids = []
        for i, (first, company, city, country, score, status, tags, attrs) in enumerate(PEOPLE):
            ids.append(
                add_contact(
                    conn,
                    f"p{i}@example.com",
                    list_id=campaign.list_id,
                    first_name=first,
                    company=company,
                    city=city,
                    country=country,
                    lead_score=score,
                    tags=tags,
                    attributes=attrs,
                )
            )
            conn.execute(
                sa.text("update app.contacts set status = :s where id = :id"),
                {"s": status, "id": ids[-1]},
            )
        conn.execute(
            sa.text(
                "insert into app.campaign_contacts (tenant_id, campaign_id, contact_id) "
                "select app.current_tenant_id(), :c, unnest(cast(:ids as uuid[]))"
            ),
            {"c": campaign.id, "ids": ids},
        )
        for person, kind, step in EVENTS:
            step_id = campaign.steps[step] if step else None
            add_event(conn, kind, ids[person], campaign.id, step_id, now)
        contacts = {
            row.email: dict(row._mapping)
            for row in conn.execute(sa.text("select * from app.contacts"))
        }
    events: dict[str, set[tuple[str, str | None]]] = {email: set() for email in contacts}
    for person, kind, step in EVENTS:
        events[f"p{person}@example.com"].add((kind, step))

    def decide(cond) -> tuple[dict[str, bool], dict[str, bool]]:
        fragment, params = to_sql(cond, campaign.steps)
        statement = sa.text(
            f"""
            select ct.email, {fragment} as result
            from app.campaign_contacts cc
            join app.contacts ct on ct.tenant_id = cc.tenant_id and ct.id = cc.contact_id
            where cc.campaign_id = :campaign_id
            """
        )
        with tenant_transaction(database.app, tenant_id) as conn:
            in_sql = dict(conn.execute(statement, {**params, "campaign_id": campaign.id}).all())
        in_python = {
            email: evaluate(cond, contact, events[email]) for email, contact in contacts.items()
        }
        return in_sql, in_python

    return decide


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(cond=CONDITIONS)
def test_sql_and_python_decide_every_condition_alike(population, cond):
    assert validate(cond, STEP_KEYS) == []
    in_sql, in_python = population(cond)
    assert in_sql == in_python


@pytest.mark.parametrize(
    ("cond", "expected"),
    [
        # numbers compare numerically; text that is not a plain number is false, never an error
        ({"field": "Seats", "gt": 5}, {"p0", "p1", "p7"}),
        ({"field": "Seats", "lte": 0.5}, {"p8", "p9"}),
        # text compares by code point
        ({"field": "company", "gte": "a"}, {"p1", "p3", "p4", "p9"}),
        # contains on text ignores case; on tags it is membership (case matters)
        ({"field": "company", "contains": "ACME"}, {"p0", "p1", "p2", "p8"}),
        ({"field": "tags", "contains": "vip"}, {"p0", "p5"}),
        # one character for one, as the database lower-cases: İ is i, ß stays ß
        ({"field": "city", "contains": "ist"}, {"p3"}),
        ({"field": "company", "contains": "SS"}, set()),
        # missing never equals, so ne / not_in hold for it
        ({"field": "city", "ne": "Berlin"}, {f"p{i}" for i in range(10)} - {"p0"}),
        ({"field": "country", "exists": False}, {"p1", "p2", "p7"}),
        ({"lead_score": {"gte": 50}}, {"p0", "p1", "p6"}),
        ({"field": "Plan", "eq": 3}, {"p7"}),
        ({"field": "Flag", "eq": True}, {"p3"}),
        ({"opened": "intro"}, {"p0", "p3"}),
        ({"not_replied": "any"}, {f"p{i}" for i in range(10)} - {"p2", "p6"}),
    ],
)
def test_conditions_mean_what_the_campaign_file_says(population, cond, expected):
    in_sql, in_python = population(cond)
    assert in_sql == in_python
    assert {email.split("@")[0] for email, hit in in_sql.items() if hit} == expected


def test_without_events_there_is_no_engagement():
    assert evaluate({"not_opened": "any"}, {}, set()) is True
    assert evaluate({"clicked": "intro"}, {}, set()) is False
