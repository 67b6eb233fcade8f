"""Conditions and actions of a campaign's steps: checked, compiled to SQL, evaluated in Python.

A condition is the YAML a campaign file holds, exactly as written:

* engagement: ``{opened|clicked|replied|not_opened|not_clicked|not_replied: STEP_ID|any}`` —
  an ``open``/``click``/``reply`` event of this enrollment's campaign and contact for that step
  (``any``: for any step, or none recorded);
* ``{lead_score: {OP: NUMBER, ...}}`` with OP in eq ne gt gte lt lte (several ops: all hold);
* ``{field: NAME, OP: VALUE}`` with OP in eq ne in not_in contains exists gt gte lt lte, on a
  contact column (`CONDITION_FIELDS`) or else the key NAME of the contact's ``attributes``
  (exactly as stored: the upload's header);
* ``{all: [...]}`` / ``{any: [...]}`` of conditions.

What must hold: `to_sql` and `evaluate` agree on every contact (the engine branches with SQL,
the forecast with Python, and a forecast must equal the run). So the semantics are pinned down
to what both sides compute identically:

* a field's value is its text (``attributes ->> NAME``; ``lead_score`` as its decimal text);
  missing (NULL) never equals, contains or compares: those are false, and ``ne``/``not_in``,
  their negations, are true;
* a number compares numerically with a value that reads as a plain decimal number
  (`NUMBER_PATTERN`, at most 100 characters: no hex, no ``NaN``, no ``1_000``); any other value
  is simply false — never an error that would abort the statement;
* a text compares by code point (``collate "C"`` in SQL); ``eq`` is exact; ``contains`` on text
  is a case-insensitive substring (the database's lower-casing: ASCII and the usual Unicode
  letters), on ``tags`` membership;
* ``exists: true`` = a value that is not empty (``tags``: at least one tag).

Values are always bound parameters; field names are looked up in a fixed allow-list (an
attribute's name is a bound parameter too), so nothing from a campaign file is spliced into SQL.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from engine.templates import CONTACT_FIELDS


class ConditionError(ValueError):
    """A condition or action that cannot run; `problems` says what is wrong and where."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


#: Engagement keys → (email_events.event_type, negated).
ENGAGEMENT = {
    "opened": ("open", False),
    "clicked": ("click", False),
    "replied": ("reply", False),
    "not_opened": ("open", True),
    "not_clicked": ("click", True),
    "not_replied": ("reply", True),
}
COMPARISONS = ("eq", "ne", "gt", "gte", "lt", "lte")
OPERATORS = (*COMPARISONS, "in", "not_in", "contains", "exists")

#: Contact columns a condition may read (anything else names an attribute).
CONDITION_FIELDS = (*CONTACT_FIELDS, "lead_score", "status", "tags")
#: Contact columns a `set` action may write (anything else sets an attribute).
WRITABLE_FIELDS = (*(f for f in CONTACT_FIELDS if f != "email"), "lead_score")
_TAG_OPERATORS = ("contains", "in", "not_in", "exists")

#: A value that reads as a number: plain decimal notation, short enough that PostgreSQL's
#: numeric input always takes it (so the guarded cast never raises).
NUMBER_PATTERN = r"^ *[-+]?([0-9]+([.][0-9]*)?|[.][0-9]+)([eE][-+]?[0-9]{1,3})? *$"
MAX_NUMBER_LENGTH = 100
_NUMBER = re.compile(NUMBER_PATTERN)

#: The SQL operator of each comparison (constants, never from input).
_SQL_OPERATOR = {"eq": "=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}

# -- the parsed form ----------------------------------------------------------------------------

Scalar = str | int | float | bool


@dataclass(frozen=True)
class _Group:
    kind: str  # "all" | "any"
    items: tuple[_Node, ...]


@dataclass(frozen=True)
class _Engagement:
    event_type: str
    step: str | None  # None: any step
    negated: bool


@dataclass(frozen=True)
class _Compare:
    name: str
    op: str
    value: Any


_Node = _Group | _Engagement | _Compare


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_scalar(value: object) -> bool:
    """A text, number or boolean a condition or action can hold (not NaN or infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return isinstance(value, str | int | float)


def _describe(value: object) -> str:
    text = json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def _nul_characters(value: object, path: str, problems: list[str]) -> None:
    """A problem for each text (key or value) holding a NUL character, which no PostgreSQL text
    can hold: refused here, where its path can be named, not by the query that binds it."""
    if isinstance(value, str):
        if "\x00" in value:
            problems.append(f"{path}: {_describe(value)} holds a NUL character (\\x00)")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(key, str) and "\x00" in key:
                problems.append(f"{path}: the key {_describe(key)} holds a NUL character (\\x00)")
            else:
                _nul_characters(item, f"{path}.{key}", problems)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _nul_characters(item, f"{path}[{i}]", problems)


def _parse_condition(cond: object, step_keys: set[str] | None, problems: list[str]) -> _Node:
    before = len(problems)
    _nul_characters(cond, "condition", problems)
    if len(problems) > before:
        return _Group("all", ())
    return _parse(cond, step_keys, "condition", problems)


def _parse(cond: object, step_keys: set[str] | None, path: str, problems: list[str]) -> _Node:
    """The condition as a tree; every problem found is appended (with its key path)."""
    if not isinstance(cond, Mapping) or not cond:
        problems.append(
            f"{path}: a condition is a mapping such as {{opened: intro}}, not {_describe(cond)}"
        )
        return _Group("all", ())
    keys = list(cond)
    if "field" in cond:
        return _parse_field(cond, path, problems)
    if len(keys) != 1:
        problems.append(
            f"{path}: one condition per mapping (found {', '.join(map(str, keys))}); "
            "combine several with all: [...] or any: [...]"
        )
        return _Group("all", ())
    key = keys[0]
    value = cond[key]
    where = f"{path}.{key}"
    if key in ("all", "any"):
        if not isinstance(value, list) or not value:
            problems.append(f"{where}: a non-empty list of conditions")
            return _Group(key, ())
        return _Group(
            key, tuple(_parse(c, step_keys, f"{where}[{i}]", problems) for i, c in enumerate(value))
        )
    if key in ENGAGEMENT:
        event_type, negated = ENGAGEMENT[key]
        if not isinstance(value, str) or not value:
            problems.append(f"{where}: a step id or `any`, not {_describe(value)}")
            return _Engagement(event_type, None, negated)
        if value == "any":
            return _Engagement(event_type, None, negated)
        if step_keys is not None and value not in step_keys:
            known = ", ".join(sorted(step_keys)) or "none"
            problems.append(f"{where}: no step {value!r} in this campaign (steps: {known})")
        return _Engagement(event_type, value, negated)
    if key == "lead_score":
        if not isinstance(value, Mapping) or not value:
            problems.append(f"{where}: a mapping of comparisons such as {{gte: 50}}")
            return _Group("all", ())
        items = []
        for op, number in value.items():
            if op not in COMPARISONS:
                problems.append(
                    f"{where}.{op}: unknown comparison (use one of {', '.join(COMPARISONS)})"
                )
            elif not _is_number(number) or not _is_scalar(number):
                problems.append(f"{where}.{op}: a number, not {_describe(number)}")
            else:
                items.append(_Compare("lead_score", op, number))
        return _Group("all", tuple(items))
    known = ", ".join([*ENGAGEMENT, "lead_score", "field", "all", "any"])
    problems.append(f"{path}: unknown condition {key!r} (use one of {known})")
    return _Group("all", ())


def _parse_field(cond: Mapping, path: str, problems: list[str]) -> _Node:
    name = cond["field"]
    if not isinstance(name, str) or not name.strip():
        problems.append(f"{path}.field: a contact field or attribute name, not {_describe(name)}")
        name = ""
    ops = [k for k in cond if k != "field"]
    unknown = [str(k) for k in ops if k not in OPERATORS]
    if unknown:
        problems.append(
            f"{path}: unknown operator {', '.join(unknown)} for field {name!r} "
            f"(use one of {', '.join(OPERATORS)})"
        )
        return _Group("all", ())
    if len(ops) != 1:
        problems.append(
            f"{path}: field {name!r} needs exactly one operator "
            f"({', '.join(OPERATORS)}), found {len(ops)}"
        )
        return _Group("all", ())
    op = ops[0]
    value = cond[op]
    where = f"{path}.{op}"
    before = len(problems)
    if name == "tags" and op not in _TAG_OPERATORS:
        problems.append(f"{where}: tags take {', '.join(_TAG_OPERATORS)}, not {op}")
    elif op == "exists":
        if not isinstance(value, bool):
            problems.append(f"{where}: true or false, not {_describe(value)}")
    elif op in ("in", "not_in"):
        if not isinstance(value, list) or not value:
            problems.append(f"{where}: a non-empty list of values, not {_describe(value)}")
        else:
            for i, item in enumerate(value):
                if not _is_scalar(item):
                    problems.append(f"{where}[{i}]: a text or a number, not {_describe(item)}")
    elif op == "contains":
        if not isinstance(value, str) or not value:
            problems.append(
                f"{where}: a non-empty text (quote numbers: '42'), not {_describe(value)}"
            )
    elif op in ("gt", "gte", "lt", "lte"):
        if isinstance(value, bool) or not _is_scalar(value):
            problems.append(f"{where}: a number or a text, not {_describe(value)}")
    elif value is None:
        problems.append(f"{where}: a value, not null (to test for a missing value: exists: false)")
    elif not _is_scalar(value):
        problems.append(f"{where}: a text, a number or true/false, not {_describe(value)}")
    if len(problems) > before:
        return _Group("all", ())
    return _Compare(name, op, list(value) if isinstance(value, list) else value)


def validate(cond: object, step_keys: set[str] | frozenset[str] | list[str]) -> list[str]:
    """Every problem of `cond`, each naming its key path (``condition.all[1].opened: ...``);
    empty when the condition can run. `step_keys` are the campaign's step ids."""
    problems: list[str] = []
    _parse_condition(cond, set(step_keys), problems)
    return problems


def _parsed(cond: object, step_keys: set[str] | None) -> _Node:
    problems: list[str] = []
    node = _parse_condition(cond, step_keys, problems)
    if problems:
        raise ConditionError(problems)
    return node


# -- SQL ----------------------------------------------------------------------------------------

_COLUMN_SQL = {name: f"ct.{name}" for name in CONDITION_FIELDS}
_counter = itertools.count(1)


@dataclass
class _Sql:
    prefix: str
    step_ids: Mapping[str, uuid.UUID]
    params: dict[str, Any] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)  # attribute name -> its parameter

    def bind(self, value: Any) -> str:
        name = f"{self.prefix}{len(self.params)}"
        self.params[name] = value
        return f":{name}"

    def node(self, node: _Node) -> str:
        if isinstance(node, _Group):
            if not node.items:
                return "true" if node.kind == "all" else "false"
            joiner = " and " if node.kind == "all" else " or "
            return "(" + joiner.join(self.node(item) for item in node.items) + ")"
        if isinstance(node, _Engagement):
            return self.engagement(node)
        return self.compare(node)

    def engagement(self, node: _Engagement) -> str:
        step = ""
        if node.step is not None:
            if node.step not in self.step_ids:
                raise ConditionError([f"condition: no step {node.step!r} in this campaign"])
            step = f" and e.step_id = cast({self.bind(self.step_ids[node.step])} as uuid)"
        found = (
            "exists (select from app.email_events e where e.tenant_id = cc.tenant_id"
            " and e.campaign_id = cc.campaign_id and e.contact_id = cc.contact_id"
            f" and e.event_type = cast({self.bind(node.event_type)} as text){step}"
            # a proxy's prefetch or a scanner's click is nobody's engagement
            " and not e.is_machine)"
        )
        return f"(not {found})" if node.negated else found

    def text(self, name: str) -> str:
        """The field's value as text (NULL when missing)."""
        if name == "lead_score":
            return "cast(ct.lead_score as text)"
        if name in _COLUMN_SQL:
            return _COLUMN_SQL[name]
        if name not in self.names:
            self.names[name] = self.bind(name)
        return f"(ct.attributes ->> cast({self.names[name]} as text))"

    def number(self, name: str) -> str:
        """The field's value as numeric, NULL when missing or not a number (never an error)."""
        if name == "lead_score":
            return "ct.lead_score"
        text = self.text(name)
        return (
            f"(case when char_length({text}) <= {MAX_NUMBER_LENGTH} "
            f"and {text} ~ '{NUMBER_PATTERN}' then cast({text} as numeric) end)"
        )

    def equals(self, name: str, value: Scalar) -> str:
        if _is_number(value):
            return f"{self.number(name)} = cast({self.bind(_decimal(value))} as numeric)"
        return f"{self.text(name)} = cast({self.bind(_text_of(value))} as text)"

    def compare(self, node: _Compare) -> str:
        name, op, value = node.name, node.op, node.value
        if name == "tags":
            return self.tags(op, value)
        if op == "exists":
            present = (
                "ct.lead_score is not null" if name == "lead_score" else f"{self.text(name)} <> ''"
            )
            return f"coalesce({present}, false)" if value else f"(not coalesce({present}, false))"
        if op in ("eq", "ne"):
            test = f"coalesce({self.equals(name, value)}, false)"
            return test if op == "eq" else f"(not {test})"
        if op in ("in", "not_in"):
            texts = [_text_of(v) for v in value if not _is_number(v)]
            numbers = [_decimal(v) for v in value if _is_number(v)]
            parts = []
            if texts:
                parts.append(f"{self.text(name)} = any(cast({self.bind(texts)} as text[]))")
            if numbers:
                parts.append(f"{self.number(name)} = any(cast({self.bind(numbers)} as numeric[]))")
            test = f"coalesce({' or '.join(parts)}, false)"
            return test if op == "in" else f"(not {test})"
        if op == "contains":
            return (
                f"coalesce(strpos(lower({self.text(name)}), "
                f"lower(cast({self.bind(value)} as text))) > 0, false)"
            )
        sql_op = _SQL_OPERATOR[op]
        if _is_number(value):
            return (
                f"coalesce({self.number(name)} {sql_op} "
                f"cast({self.bind(_decimal(value))} as numeric), false)"
            )
        return (
            f'coalesce({self.text(name)} collate "C" {sql_op} '
            f"cast({self.bind(value)} as text), false)"
        )

    def tags(self, op: str, value: Any) -> str:
        if op == "exists":
            present = "cardinality(ct.tags) > 0"
            return present if value else f"(not {present})"
        if op == "contains":
            return f"(cast({self.bind(value)} as text) = any(ct.tags))"
        overlap = f"(ct.tags && cast({self.bind([_text_of(v) for v in value])} as text[]))"
        return overlap if op == "in" else f"(not {overlap})"


def to_sql(
    cond: object, step_ids: Mapping[str, uuid.UUID], *, prefix: str | None = None
) -> tuple[str, dict[str, Any]]:
    """`cond` as a boolean SQL expression over ``cc`` (campaign_contacts) and ``ct`` (contacts),
    and its bound parameters. It is never NULL. Parameter names start with `prefix` (by default
    one no other fragment of this process uses), so several fragments can share a statement.

    Engagement reads ``app.email_events`` of the enrollment's campaign and contact; `step_ids`
    maps the campaign's step ids (YAML keys) to their rows. Raises `ConditionError` for a
    condition `validate` would refuse.
    """
    node = _parsed(cond, set(step_ids))
    sql = _Sql(prefix or f"cond{next(_counter)}_", step_ids)
    return sql.node(node), sql.params


def reads_contact(cond: object) -> bool:
    """Whether `to_sql`'s expression for `cond` reads ``ct`` (contact fields, attributes, tags),
    not only engagement: a statement need not join the contacts otherwise. Raises
    `ConditionError` as `to_sql` does."""

    def reads(node: _Node) -> bool:
        if isinstance(node, _Group):
            return any(reads(item) for item in node.items)
        return isinstance(node, _Compare)

    return reads(_parsed(cond, None))


# -- Python -------------------------------------------------------------------------------------


def _decimal(value: int | float) -> Decimal:
    return Decimal(value) if isinstance(value, int) else Decimal(repr(value))


def _text_of(value: Scalar) -> str:
    """A condition's value as the text it is compared with (YAML true → 'true')."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _json_text(value: object) -> str | None:
    """What ``jsonb ->> key`` gives for a JSON value (as far as Python can tell)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | Decimal):
        return str(value)
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def _field_text(contact: Mapping[str, Any], name: str) -> str | None:
    if name in CONDITION_FIELDS:
        value = contact.get(name)
        return None if value is None else str(value)
    return _json_text((contact.get("attributes") or {}).get(name))


def _field_number(contact: Mapping[str, Any], name: str) -> Decimal | None:
    if name == "lead_score":
        score = contact.get("lead_score")
        return None if score is None else Decimal(score)
    text = _field_text(contact, name)
    if text is None or len(text) > MAX_NUMBER_LENGTH or not _NUMBER.fullmatch(text):
        return None
    return Decimal(text.strip(" "))


def _lower(text: str) -> str:
    """Lower case as PostgreSQL's lower() does it: one character for one (U+0130 → 'i')."""
    return "".join(c.lower() if len(c.lower()) == 1 else c.lower()[0] for c in text)


def _equals(contact: Mapping[str, Any], name: str, value: Scalar) -> bool:
    if _is_number(value):
        number = _field_number(contact, name)
        return number is not None and number == _decimal(value)
    return _field_text(contact, name) == _text_of(value)


def _compare(contact: Mapping[str, Any], node: _Compare) -> bool:
    name, op, value = node.name, node.op, node.value
    if name == "tags":
        tags = set(contact.get("tags") or ())
        if op == "exists":
            return bool(tags) == value
        if op == "contains":
            return value in tags
        hit = bool(tags & {_text_of(v) for v in value})
        return hit if op == "in" else not hit
    if op == "exists":
        if name == "lead_score":
            present = contact.get("lead_score") is not None
        else:
            present = (_field_text(contact, name) or "") != ""
        return present == value
    if op in ("eq", "ne"):
        hit = _equals(contact, name, value)
        return hit if op == "eq" else not hit
    if op in ("in", "not_in"):
        hit = any(_equals(contact, name, v) for v in value)
        return hit if op == "in" else not hit
    if op == "contains":
        text = _field_text(contact, name)
        return text is not None and _lower(value) in _lower(text)
    left: Decimal | str | None
    right: Decimal | str
    if _is_number(value):
        left, right = _field_number(contact, name), _decimal(value)
    else:
        left, right = _field_text(contact, name), value
    if left is None:
        return False
    return {
        "gt": left > right,  # type: ignore[operator]
        "gte": left >= right,  # type: ignore[operator]
        "lt": left < right,  # type: ignore[operator]
        "lte": left <= right,  # type: ignore[operator]
    }[op]


def _evaluate(node: _Node, contact: Mapping[str, Any], events: set[tuple[str, str | None]]) -> bool:
    if isinstance(node, _Group):
        results = (_evaluate(item, contact, events) for item in node.items)
        return all(results) if node.kind == "all" else any(results)
    if isinstance(node, _Engagement):
        if node.step is None:
            found = any(kind == node.event_type for kind, _ in events)
        else:
            found = (node.event_type, node.step) in events
        return found != node.negated
    return _compare(contact, node)


def evaluate(cond: object, contact: Mapping[str, Any], events: set[tuple[str, str | None]]) -> bool:
    """`cond` for one contact, as `to_sql` decides it. `contact` holds the contact's columns
    (``attributes`` a dict, ``tags`` a list); `events` the enrollment's engagement as
    (event_type, step id or None) pairs, event types as in ``email_events`` (open, click,
    reply). No events = no engagement (the forecast's assumption)."""
    return _evaluate(_parsed(cond, None), contact, events)


# -- actions ------------------------------------------------------------------------------------

ACTIONS = ("tag", "untag", "set", "add_to_list", "remove_from_list", "exit")
MAX_LIST_NAME = 200
MAX_TAG = 200
_INT32 = 2**31


@dataclass(frozen=True)
class Action:
    """A parsed action. `name` is the tag, list or exit reason; for `set`, `columns` are the
    contact columns to write (None clears), `attributes` the attributes to set and
    `removed_attributes` those a null removes."""

    kind: str
    name: str | None = None
    columns: Mapping[str, Any] = field(default_factory=dict)
    attributes: Mapping[str, Any] = field(default_factory=dict)
    removed_attributes: tuple[str, ...] = ()


def _parse_action(action: object, problems: list[str]) -> Action | None:
    path = "action"
    before = len(problems)
    _nul_characters(action, path, problems)
    if len(problems) > before:
        return None
    if not isinstance(action, Mapping) or len(action) != 1:
        problems.append(
            f"{path}: exactly one of {', '.join(ACTIONS)}, such as {{tag: cold}}; "
            f"not {_describe(action)}"
        )
        return None
    ((kind, value),) = action.items()
    where = f"{path}.{kind}"
    if kind not in ACTIONS:
        problems.append(f"{path}: unknown action {kind!r} (use one of {', '.join(ACTIONS)})")
        return None
    if kind != "set":
        limit = MAX_TAG if kind in ("tag", "untag") else MAX_LIST_NAME
        what = {"tag": "a tag", "untag": "a tag", "exit": "a reason"}.get(kind, "a list name")
        if not isinstance(value, str) or not value.strip():
            problems.append(f"{where}: {what}, not {_describe(value)}")
            return None
        if len(value.strip()) > limit:
            problems.append(f"{where}: at most {limit} characters, not {len(value.strip())}")
            return None
        return Action(kind, name=value.strip())
    if not isinstance(value, Mapping) or not value:
        problems.append(f"{where}: a mapping of fields to values, such as {{company: Acme}}")
        return None
    before = len(problems)
    columns: dict[str, Any] = {}
    attributes: dict[str, Any] = {}
    removed: list[str] = []
    for name, new in value.items():
        here = f"{where}.{name}"
        if not isinstance(name, str) or not name.strip():
            problems.append(f"{where}: a field name, not {_describe(name)}")
        elif name in ("email", "status", "tags"):
            problems.append(
                f"{here}: {name} cannot be set by an action"
                + (" (use tag/untag)" if name == "tags" else "")
            )
        elif name == "lead_score":
            if new is not None and (
                isinstance(new, bool) or not isinstance(new, int) or abs(new) >= _INT32
            ):
                problems.append(f"{here}: a whole number or null, not {_describe(new)}")
            else:
                columns[name] = new
        elif new is not None and not _is_scalar(new):
            problems.append(f"{here}: a text, a number, true/false or null, not {_describe(new)}")
        elif name == "timezone" and new is not None and not _is_timezone(str(new)):
            problems.append(f"{here}: {_describe(new)} is not an IANA time zone (Europe/Berlin)")
        elif name in WRITABLE_FIELDS:
            columns[name] = None if new is None else _text_of(new)
        elif new is None:
            removed.append(name)
        else:
            attributes[name] = new
    if len(problems) > before:
        return None
    return Action("set", columns=columns, attributes=attributes, removed_attributes=tuple(removed))


def _is_timezone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ValueError, KeyError, OSError):
        return False
    return True


def validate_action(action: object) -> list[str]:
    """Every problem of `action` (the YAML as written), each naming its key path."""
    problems: list[str] = []
    _parse_action(action, problems)
    return problems


def parse_action(action: object) -> Action:
    """`action` ready to run; `ConditionError` for one `validate_action` would refuse."""
    problems: list[str] = []
    parsed = _parse_action(action, problems)
    if parsed is None:
        raise ConditionError(problems)
    return parsed
