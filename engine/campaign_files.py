"""Campaign files: the YAML format of `penguin campaign apply`, checked, applied and printed back.

A campaign is defined by a file (see `examples/q4-outreach.yaml` and the README for the format).
What must hold:

* **Every problem at once.** `load` parses and checks the whole file and raises one
  `CampaignFileError` listing every problem as `FILE: where: what`, `where` being the key path
  (`schedule.window`, `steps[warm?].condition`); `check` adds what only the database knows
  (sender accounts, the list's contacts). Nothing is written unless the whole file is good.
* **The database holds what was applied.** `campaigns.spec` is the normalized definition
  (every default filled in), `spec_sha256` its fingerprint; `export` prints `spec` back as YAML,
  so apply → export → apply changes nothing, and an approval names the definition it approved.
* **Steps keep their rows by id.** A re-apply updates the step rows of ids it keeps (so the
  enrollments standing on them stay), inserts new ones, and soft-deletes the rest
  (`removed_at`; their messages keep pointing at them). Jumps are resolved into
  `next_step_id` / `true_next_step_id` / `false_next_step_id` (NULL = end), so the engine never
  reads the file's order.
* **Running campaigns.** A draft or paused campaign takes any change. An active or scheduled
  one takes changes to its settings (limits, window, senders, tracking, ...), which an operator
  expects to tune while it runs, but not to its steps or its list: those are refused with the
  command to pause it first. A completed campaign takes no change (clone it). Removing a step
  that enrollments stand on is refused, saying how many.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

import sqlalchemy as sa
import yaml
from email_validator import EmailNotValidError
from jinja2.sandbox import SandboxedEnvironment
from sqlalchemy.engine import Connection

from engine.ingest.store import MAX_LIST_NAME, ensure_list
from engine.senders import our_address
from engine.sending.store import campaign_sends_today
from engine.sequence import conditions, rules
from engine.templates import (
    CONTACT_FIELDS,
    TemplateRenderError,
    check_syntax,
    template_variables,
    variable_name,
)
from engine.tenants import current_tenant_name, penguin_command, shell_word
from engine.text import shown
from engine.userfiles import UserFileError, open_input, too_big

#: A campaign file larger than this is refused before it is parsed.
MAX_FILE_BYTES = 1024 * 1024
#: Values in a file, counting each use of a YAML alias in full (an alias bomb is refused).
MAX_VALUES = 200_000
MAX_STEPS = 500
MAX_NAME = 200
MAX_STEP_ID = 100
#: A wait longer than this is a typo (and would overflow date arithmetic soon after).
MAX_WAIT = timedelta(days=3650)

# -- the format ---------------------------------------------------------------------------------
# Key orders are the issue's; `export` prints keys in these orders.

TOP_KEYS = (
    "name",
    "description",
    "list",
    "senders",
    "from_name",
    "reply_to",
    "timezone",
    "schedule",
    "limits",
    "tracking",
    "stop_on_reply",
    "approval",
    "steps",
)
TOP_REQUIRED = ("name", "list", "senders", "steps")
SCHEDULE_KEYS = ("strategy", "start_at", "end_at", "window", "days")
LIMITS_KEYS = ("daily",)
TRACKING_KEYS = ("opens", "clicks")
STEP_TYPES = ("email", "wait", "condition", "action")
#: Keys of a step: its id, its type's key, then the jumps.
STEP_KEYS = ("id", *STEP_TYPES, "then", "else", "next")
EMAIL_KEYS = ("subject", "text", "html", "variants", "sender")
VARIANT_KEYS = ("subject", "text", "html", "weight")

STRATEGIES = ("immediate", "scheduled", "optimized")
STOP_ON_REPLY = ("contact", "company", "never")
APPROVAL = ("none", "required")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # ISO weekday = index + 1
#: The target of a jump that completes the enrollment; no step may be called this.
END = "end"

DEFAULTS: dict[str, Any] = {
    "description": None,
    "from_name": None,
    "reply_to": None,
    "timezone": "UTC",
    "schedule": {
        "strategy": "immediate",
        "start_at": None,
        "end_at": None,
        "window": "09:00-17:00",
        "days": ["mon", "tue", "wed", "thu", "fri"],
    },
    "limits": {"daily": 500},
    "tracking": {"opens": True, "clicks": True},
    "stop_on_reply": "contact",
    "approval": "none",
}

_DURATION = re.compile(r"([1-9][0-9]{0,6})([mhdw])")
_DURATION_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class CampaignFileError(ValueError):
    """A campaign file (or a definition applied from one) that cannot be used.

    `problems` holds one line per problem, each `SOURCE: where: what is wrong`.
    """

    def __init__(self, problems: Sequence[str], source: str = "") -> None:
        self.problems = list(problems)
        self.source = source
        count = len(self.problems)
        head = f"{count} problem{'s' if count != 1 else ''}" + (f" in {source}" if source else "")
        super().__init__(head + ":\n" + "\n".join(f"  {p}" for p in self.problems))


@dataclass(frozen=True)
class CampaignSpec:
    """A campaign file that passed every check that needs no database.

    `data` is the normalized definition: every key present, defaults filled in, in the issue's
    key order; it is what `apply` stores and `export` prints.
    """

    source: str
    data: dict[str, Any]
    sha256: str

    @property
    def name(self) -> str:
        return self.data["name"]

    @property
    def steps(self) -> list[dict[str, Any]]:
        return self.data["steps"]


def spec_sha256(data: Mapping[str, Any]) -> str:
    """The fingerprint of a normalized definition: sha256 of its canonical JSON."""
    canonical = json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# -- reading a file -----------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """`yaml.SafeLoader` that notes keys repeated in one mapping instead of keeping the last."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[str] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[tuple[str, str], int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(
                key_node, yaml.ScalarNode
            ):
                continue
            key = (key_node.tag, key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen:
                self.duplicates.append(
                    f"line {line}: key {shown(key_node.value, 40)!r} appears twice in one "
                    f"mapping (first on line {seen[key]}); keep one"
                )
            else:
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node: yaml.Node, memo: dict[int, int], path: set[int]) -> int:
    """How many values `node` stands for with every alias expanded (each alias counts in full)."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in path:
        raise _SelfReferenceError(node.start_mark.line + 1)
    path.add(key)
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(child, memo, path) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(
            _expanded_size(k, memo, path) + _expanded_size(v, memo, path) for k, v in node.value
        )
    else:
        size = 1
    path.discard(key)
    memo[key] = size
    return size


class _SelfReferenceError(Exception):
    def __init__(self, line: int) -> None:
        self.line = line


def load(path: str | Path) -> CampaignSpec:
    """Read, parse and check the campaign file at `path`; `CampaignFileError` lists every
    problem."""
    path = Path(path)
    source = shown(str(path), 200)
    try:
        with open_input(
            path, label=source, max_bytes=MAX_FILE_BYTES, what="a campaign file"
        ) as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except UserFileError as exc:
        raise CampaignFileError([str(exc)], source) from None
    except OSError as exc:
        raise CampaignFileError([f"{source}: cannot be read: {exc.strerror}"], source) from None
    if len(raw) > MAX_FILE_BYTES:  # it grew since it was opened
        raise CampaignFileError(
            [too_big(source, len(raw), MAX_FILE_BYTES, "a campaign file")], source
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise CampaignFileError(
            [f"{source}: line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x})"], source
        ) from None
    return loads(text, source)


def loads(text: str, source: str = "<text>") -> CampaignSpec:
    """Parse and check a campaign file's text; `source` names it in every message."""
    try:
        loader = _Loader(text)
    except yaml.reader.ReaderError as exc:
        raise CampaignFileError([_unreadable_character(text, exc, source)], source) from None
    try:
        node = loader.get_single_node()
        if node is not None:
            size = _expanded_size(node, {}, set())
            if size > MAX_VALUES:
                raise CampaignFileError(
                    [
                        f"{source}: the file holds {size:,} values once its aliases are "
                        f"expanded; a campaign file may hold at most {MAX_VALUES:,}"
                    ],
                    source,
                )
        data = loader.construct_document(node) if node is not None else None
    except yaml.reader.ReaderError as exc:
        raise CampaignFileError([_unreadable_character(text, exc, source)], source) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = " ".join(str(part) for part in (exc.context, exc.problem) if part)
        raise CampaignFileError(
            [f"{source}: {where}not valid YAML: {shown(what, 200)}"], source
        ) from None
    except yaml.YAMLError as exc:
        raise CampaignFileError([f"{source}: not valid YAML: {shown(exc, 200)}"], source) from None
    except _SelfReferenceError as exc:
        raise CampaignFileError(
            [f"{source}: line {exc.line}: a YAML alias refers to the value that contains it"],
            source,
        ) from None
    except RecursionError:
        raise CampaignFileError([f"{source}: the file nests too deeply"], source) from None
    finally:
        loader.dispose()
    problems = [f"{source}: {line}" for line in loader.duplicates]
    return parse(data, source, problems)


def _unreadable_character(text: str, exc: yaml.reader.ReaderError, source: str) -> str:
    """YAML refuses control characters (a NUL byte, an escape) anywhere in a file: where the
    first one is, and what to do."""
    before = text[: exc.position]
    line = before.count("\n") + 1
    column = exc.position - (before.rfind("\n") + 1) + 1
    code = exc.character if isinstance(exc.character, int) else ord(str(exc.character)[:1] or " ")
    name = {0: " (NUL)", 0x1B: " (escape)", 0x7F: " (delete)"}.get(code, "")
    return (
        f"{source}: line {line}, column {column}: the control character U+{code:04X}{name} "
        "cannot be in a campaign file; remove it (save the file as plain UTF-8 text)"
    )


# -- checking and normalizing -------------------------------------------------------------------


class _Problems:
    """Problems found so far, each `SOURCE: where: what`."""

    def __init__(self, source: str, found: Iterable[str] = ()) -> None:
        self.source = source
        self.lines: list[str] = list(found)

    def add(self, where: str, what: str) -> None:
        self.lines.append(f"{self.source}: {where}: {what}" if where else f"{self.source}: {what}")


def _kind(value: object) -> str:
    if value is None:
        return "empty"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a yes/no value)"
    if isinstance(value, Mapping):
        return "a mapping" if value else "an empty mapping"
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    if isinstance(value, datetime | date):
        return f"a date ({value.isoformat()})"
    if isinstance(value, int | float):
        return f"a number ({value})"
    return f"{shown(value, 40)!r}"


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _mapping(
    value: object,
    where: str,
    known: Sequence[str],
    problems: _Problems,
    *,
    required: Sequence[str] = (),
    what: str = "a mapping",
) -> dict[str, Any] | None:
    """`value` as a mapping with string keys; unknown and missing keys are problems."""
    if not isinstance(value, Mapping):
        problems.add(where, f"must be {what}, not {_kind(value)}")
        return None
    result: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            hint = (
                " (YAML reads unquoted yes/no/on/off as true/false: quote the key)"
                if isinstance(key, bool)
                else ""
            )
            problems.add(_join(where, shown(key, 40)), f"keys must be text{hint}")
            continue
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            problems.add(
                _join(where, shown(key, 40)), f"unknown key; {hint}known keys: {', '.join(known)}"
            )
            continue
        result[key] = item
    for key in required:
        if key not in value:
            problems.add(where, f"missing required key {key!r}")
    return result


def _text(
    value: object,
    where: str,
    problems: _Problems,
    *,
    optional: bool = False,
    one_line: bool = False,
    limit: int | None = None,
) -> str | None:
    """A text value; `optional` allows null. Problems: not text, empty, NUL, too long."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        hint = " (quote it)" if isinstance(value, bool | int | float | date) else ""
        problems.add(where, f"must be text{hint}, not {_kind(value)}")
        return None
    if not value.strip():
        problems.add(
            where, "must not be empty" + (" (use null to leave it out)" if optional else "")
        )
        return None
    if "\x00" in value:
        problems.add(where, "contains a NUL character")
        return None
    if one_line and _CONTROL.search(value):
        problems.add(where, "must be one line without control characters")
        return None
    if limit is not None and len(value) > limit:
        problems.add(where, f"is {len(value):,} characters long; at most {limit:,}")
        return None
    return value


def _address(
    value: object, where: str, problems: _Problems, *, optional: bool = False
) -> str | None:
    """An address of ours, by the rule and in the form of sender accounts (`our_address`)."""
    text = _text(value, where, problems, optional=optional, one_line=True, limit=320)
    if text is None:
        return None
    try:
        # Whether the address is a sender account is the database's question (`check`).
        return our_address(text)
    except EmailNotValidError as exc:
        problems.add(where, f"{shown(text, 80)!r} is not a valid address: {exc}")
        return None


def _choice(value: object, where: str, options: Sequence[str], problems: _Problems) -> str | None:
    if isinstance(value, str) and value in options:
        return value
    problems.add(where, f"must be one of {', '.join(options)}, not {_kind(value)}")
    return None


def _positive_int(value: object, where: str, problems: _Problems, limit: int) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= limit:
        problems.add(where, f"must be a whole number from 1 to {limit:,}, not {_kind(value)}")
        return None
    return value


def _flag(value: object, where: str, problems: _Problems) -> bool | None:
    if isinstance(value, bool):
        return value
    problems.add(where, f"must be true or false, not {_kind(value)}")
    return None


def _timezone(value: object, where: str, problems: _Problems) -> str | None:
    text = _text(value, where, problems, one_line=True, limit=100)
    if text is None:
        return None
    if rules.timezone_named(text) is None:
        zones = sorted(available_timezones())
        close = difflib.get_close_matches(text.strip(), zones, n=1)
        hint = f"; did you mean {close[0]}?" if close else " (use an IANA name like Europe/Berlin)"
        problems.add(where, f"unknown timezone {shown(text, 60)!r}{hint}")
        return None
    return text.strip()


def _iso(moment: datetime) -> str:
    """A moment as written in a file: minutes unless it has seconds, its offset if it has one."""
    spec = "minutes" if moment.second == 0 and moment.microsecond == 0 else "auto"
    return moment.isoformat(timespec=spec)


def _moment(value: object, where: str, problems: _Problems) -> str | None:
    """A date and time (`2026-12-01T09:00`, local to the campaign unless it has an offset), as
    its normalized text."""
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, date):
        return _iso(datetime.combine(value, time()))
    if isinstance(value, str):
        try:
            return _iso(datetime.fromisoformat(value.strip()))
        except ValueError:
            pass
    problems.add(where, f"must be a date and time like 2026-12-01T09:00, not {_kind(value)}")
    return None


def resolve_moment(text: str, tz: str) -> datetime:
    """A normalized moment of a definition as an aware datetime (naive ones in `tz`)."""
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=ZoneInfo(tz))


def parse_duration(text: str) -> timedelta:
    """`45m`, `12h`, `3d`, `2w` as a timedelta (the text must match the format)."""
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ValueError(f"not a duration: {text!r}")
    return timedelta(**{_DURATION_UNITS[match.group(2)]: int(match.group(1))})


def _window(value: object, where: str, problems: _Problems) -> str | None:
    """A send window as `rules.parse_window` reads it (the engine's own parser), normalized."""
    if not isinstance(value, str):
        problems.add(where, f'must be a time range like "09:00-17:00", not {_kind(value)}')
        return None
    try:
        start, end = rules.parse_window(value)
    except ValueError as exc:
        problems.add(where, shown(exc, 200))
        return None
    return rules.format_window(rules.Window(start, end, rules.ALL_DAYS))


def _days(value: object, where: str, problems: _Problems) -> list[str] | None:
    if not isinstance(value, list) or not value:
        problems.add(where, f"must be a list of days like [mon, tue], not {_kind(value)}")
        return None
    found: set[int] = set()
    valid = True
    for index, day in enumerate(value, start=1):
        try:
            (number,) = rules.parse_days([day]) if isinstance(day, str) else (None,)
        except ValueError:
            number = None
        if number is None:
            problems.add(
                f"{where}[#{index}]", f"must be one of {', '.join(DAYS)}, not {_kind(day)}"
            )
            valid = False
        elif number in found:
            problems.add(f"{where}[#{index}]", f"{DAYS[number - 1]} is listed twice")
            valid = False
        else:
            found.add(number)
    return rules.format_days(found) if valid else None


def _plain(value: object, where: str, problems: _Problems) -> Any:
    """A condition or action as JSON values: dates become their ISO text; keys must be text."""
    if isinstance(value, Mapping):
        result = {}
        for key, item in value.items():
            if not isinstance(key, str):
                problems.add(_join(where, shown(key, 40)), "keys must be text (quote the key)")
                continue
            result[key] = _plain(item, _join(where, key), problems)
        return result
    if isinstance(value, list):
        return [_plain(item, f"{where}[#{i}]", problems) for i, item in enumerate(value, start=1)]
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str) and "\x00" in value:
        problems.add(where, "contains a NUL character")
        return value
    if isinstance(value, float) and not math.isfinite(value):
        problems.add(where, f"{value} is not a number a condition or action can hold")
        return None
    if value is None or isinstance(value, str | bool | int | float):
        return value
    problems.add(where, f"is not a value a condition or action can hold ({type(value).__name__})")
    return None


def _template(source: str | None, where: str, problems: _Problems) -> None:
    if source is None:
        return
    try:
        check_syntax(source, where=where)
    except TemplateRenderError as exc:
        problems.lines.append(f"{problems.source}: {exc}")


# Conditions and actions are validated by the sequence engine's own module, so the file accepts
# exactly what the engine runs.


def _email(value: object, where: str, problems: _Problems) -> dict[str, Any] | None:
    email = _mapping(value, where, EMAIL_KEYS, problems, what="a mapping of subject, text, ...")
    if email is None:
        return None
    sender = _address(email.get("sender"), _join(where, "sender"), problems, optional=True)
    if "variants" in email:
        for key in ("subject", "text", "html"):
            if key in email:
                problems.add(
                    _join(where, key),
                    "an email step has either subject/text/html or variants, not both "
                    "(give each variant its own subject and text)",
                )
        variants_value = email["variants"]
        if not isinstance(variants_value, list) or not variants_value:
            problems.add(
                _join(where, "variants"),
                f"must be a list of {{subject, text, html, weight}}, not {_kind(variants_value)}",
            )
            return None
        variants = []
        for index, item in enumerate(variants_value, start=1):
            at = f"{where}.variants[#{index}]"
            variant = _mapping(
                item,
                at,
                VARIANT_KEYS,
                problems,
                required=("subject", "text"),
                what="a mapping of subject, text, html, weight",
            )
            if variant is None:
                continue
            subject = (
                _text(variant.get("subject"), f"{at}.subject", problems)
                if "subject" in variant
                else None
            )
            text = _text(variant.get("text"), f"{at}.text", problems) if "text" in variant else None
            html = _text(variant.get("html"), f"{at}.html", problems, optional=True)
            weight = _positive_int(variant.get("weight", 1), f"{at}.weight", problems, 1_000_000)
            for part, source in (("subject", subject), ("text", text), ("html", html)):
                _template(source, f"{at}.{part}", problems)
            variants.append({"subject": subject, "text": text, "html": html, "weight": weight})
        return {"variants": variants, "sender": sender}
    if "subject" not in email or "text" not in email:
        missing = [key for key in ("subject", "text") if key not in email]
        problems.add(
            where,
            f"missing {' and '.join(missing)}: an email step needs a subject and a text "
            "(or variants)",
        )
    subject = (
        _text(email["subject"], _join(where, "subject"), problems) if "subject" in email else None
    )
    text = _text(email["text"], _join(where, "text"), problems) if "text" in email else None
    html = _text(email.get("html"), _join(where, "html"), problems, optional=True)
    for part, source in (("subject", subject), ("text", text), ("html", html)):
        _template(source, _join(where, part), problems)
    return {"subject": subject, "text": text, "html": html, "sender": sender}


def _wait(value: object, where: str, problems: _Problems) -> str | dict[str, str] | None:
    hint = "a duration like 45m, 12h, 3d or 2w, or {until: 2026-12-10T09:00}"
    if isinstance(value, str):
        text = value.strip()
        if _DURATION.fullmatch(text) is None:
            problems.add(where, f"{shown(value, 40)!r} is not a duration; give {hint}")
            return None
        if parse_duration(text) > MAX_WAIT:
            problems.add(where, f"{text} is longer than {MAX_WAIT.days} days")
            return None
        return text
    if isinstance(value, Mapping):
        wait = _mapping(value, where, ("until",), problems, required=("until",))
        if wait is None or "until" not in wait:
            return None
        until = _moment(wait["until"], _join(where, "until"), problems)
        return None if until is None else {"until": until}
    problems.add(where, f"a wait needs {hint}, not {_kind(value)}")
    return None


def _step(value: object, index: int, problems: _Problems) -> tuple[str, dict[str, Any]] | None:
    """One step (without its jumps resolved): (label for messages, normalized step)."""
    step_id = value.get("id") if isinstance(value, Mapping) else None
    named = isinstance(step_id, str) and step_id.strip() and not _CONTROL.search(step_id)
    label = f"steps[{shown(step_id, MAX_STEP_ID)}]" if named else f"steps[#{index}]"
    raw = _mapping(value, label, STEP_KEYS, problems, what="a mapping with an id and a type")
    if raw is None:
        return None
    if "id" not in raw:
        problems.add(
            label, "missing required key 'id' (a name for the step, unique in the campaign)"
        )
    elif (
        _text(step_id, f"{label}.id", problems, one_line=True, limit=MAX_STEP_ID) is not None
        and step_id == END
    ):
        problems.add(f"{label}.id", f"{END!r} is reserved (a jump to `end` completes)")
    types = [key for key in STEP_TYPES if key in raw]
    if not types:
        problems.add(label, f"missing the step's type: one of {', '.join(STEP_TYPES)}")
        return None
    if len(types) > 1:
        problems.add(
            label, f"a step has one type, this one has {' and '.join(types)}; split it in two"
        )
        return None
    kind = types[0]
    where = f"{label}.{kind}"
    step: dict[str, Any] = {"id": step_id}
    if kind == "email":
        step["email"] = _email(raw["email"], where, problems)
    elif kind == "wait":
        step["wait"] = _wait(raw["wait"], where, problems)
    elif kind == "condition":
        step["condition"] = _plain(raw["condition"], where, problems)
    else:
        step["action"] = _plain(raw["action"], where, problems)
    jumps = ("then", "else") if kind == "condition" else ("next",)
    for key in ("then", "else", "next"):
        if key not in raw:
            continue
        if key not in jumps:
            problems.add(
                f"{label}.{key}",
                "only a condition step has then/else"
                if key != "next"
                else "a condition step jumps with then/else, not next",
            )
            continue
        target = raw[key]
        if target is None:
            continue  # same as leaving it out: the next step in the file
        if not isinstance(target, str) or not target.strip():
            problems.add(f"{label}.{key}", f"must be a step id or {END}, not {_kind(target)}")
            continue
        step[key] = target
    return label, step


def _links(steps: list[dict[str, Any]]) -> dict[str, list[str | None]]:
    """Where each step goes: its successors' ids (None = end), implicit order filled in."""
    links: dict[str, list[str | None]] = {}
    for position, step in enumerate(steps):
        following = steps[position + 1]["id"] if position + 1 < len(steps) else None
        keys = ("then", "else") if "condition" in step else ("next",)
        targets = []
        for key in keys:
            target = step.get(key, following)
            targets.append(None if target == END else target)
        links[step["id"]] = targets
    return links


def _loops(nodes_: list[str], links: Mapping[str, list[str | None]]) -> list[list[str]]:
    """The loops among `nodes_` (strongly connected parts with more than one step, or a step
    that goes to itself), each in file order; links leaving `nodes_` are ignored."""
    inside = set(nodes_)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(start: str) -> None:  # iterative Tarjan: a long chain of steps must not recurse
        nonlocal counter
        work = [(start, 0)]
        while work:
            node, child = work.pop()
            if child == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            targets = [t for t in links[node] if t in inside]
            if child < len(targets):
                work.append((node, child + 1))
                target = targets[child]
                if target not in index:
                    work.append((target, 0))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            if low[node] == index[node]:
                part = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    part.append(member)
                    if member == node:
                        break
                if len(part) > 1 or node in links[node]:
                    found.append(sorted(part, key=nodes_.index))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])

    for node in nodes_:
        if node not in index:
            visit(node)
    return sorted(found, key=lambda loop: nodes_.index(loop[0]))


def _check_graph(
    steps: list[dict[str, Any]], labels: Mapping[str, str], problems: _Problems
) -> None:
    """Jumps to missing steps, unreachable steps, loops that never wait or repeat an email."""
    ids = [step["id"] for step in steps]
    known = set(ids)
    broken = False
    for step in steps:
        for key in ("then", "else", "next"):
            target = step.get(key)
            if target is not None and target != END and target not in known:
                close = difflib.get_close_matches(target, ids, n=1)
                hint = f"; did you mean {close[0]}?" if close else ""
                problems.add(
                    f"{labels[step['id']]}.{key}",
                    f"jumps to {shown(target, 60)!r}, which is not a step id of this campaign "
                    f"(or {END}){hint}",
                )
                broken = True
    if broken:
        return
    links = _links(steps)
    reached = {ids[0]}
    todo = [ids[0]]
    while todo:
        for target in links[todo.pop()]:
            if target is not None and target not in reached:
                reached.add(target)
                todo.append(target)
    for step_id in ids:
        if step_id not in reached:
            problems.add(
                labels[step_id],
                "unreachable: no step leads here (steps run in file order unless next, then "
                "or else jump; a step after a jump needs a jump to it)",
            )
    timed = {s["id"] for s in steps if "wait" in s and isinstance(s["wait"], str)}
    for loop in _loops([i for i in ids if i not in timed], links):
        problems.add(
            labels[loop[0]],
            f"the loop {' → '.join([*loop, loop[0]])} has no wait with a duration, so an "
            "enrollment would go round it without end (a wait until a date is over once the "
            "date has passed)",
        )
    emails = {s["id"] for s in steps if "email" in s}
    for loop in _loops(ids, links):
        for step_id in (i for i in loop if i in emails):
            problems.add(
                labels[step_id],
                f"email step {shown(step_id, 60)} is in the loop {' → '.join([*loop, loop[0]])}, "
                "but a contact gets each email step at most once; make a separate step for the "
                "repeat",
            )


def _steps(value: object, problems: _Problems) -> list[dict[str, Any]] | None:
    if not isinstance(value, list) or not value:
        problems.add("steps", f"must be a list of at least one step, not {_kind(value)}")
        return None
    if len(value) > MAX_STEPS:
        problems.add("steps", f"{len(value):,} steps; a campaign may have at most {MAX_STEPS}")
        return None
    parsed = [_step(item, index, problems) for index, item in enumerate(value, start=1)]
    labels: dict[str, str] = {}
    seen: set[str] = set()
    steps: list[dict[str, Any]] = []
    valid = True
    for entry in parsed:
        if entry is None:
            valid = False
            continue
        label, step = entry
        step_id = step["id"]
        if not isinstance(step_id, str) or not step_id.strip() or step_id == END:
            valid = False
            continue
        if step_id in seen:
            problems.add(f"{label}.id", f"the id {shown(step_id, 60)!r} is used by an earlier step")
            valid = False
            continue
        seen.add(step_id)
        labels[step_id] = label
        steps.append(step)
    # Conditions and actions are checked by the sequence engine's own module, so a file holds
    # exactly what the engine runs; its messages start with their key path (`condition.all[0]`).
    for step in steps:
        label = labels[step["id"]]
        if "condition" in step:
            found = conditions.validate(step["condition"], seen)
        elif "action" in step:
            found = conditions.validate_action(step["action"])
        else:
            continue
        problems.lines.extend(f"{problems.source}: {label}.{problem}" for problem in found)
    if not valid:
        return None
    _check_graph(steps, labels, problems)
    return [_ordered_step(step) for step in steps]


def _ordered_step(step: dict[str, Any]) -> dict[str, Any]:
    return {key: step[key] for key in STEP_KEYS if key in step}


def parse(data: object, source: str = "<text>", found: Iterable[str] = ()) -> CampaignSpec:
    """Check a loaded campaign file (`found`: problems already seen while reading it) and
    normalize it; raises `CampaignFileError` listing every problem."""
    problems = _Problems(source, found)
    if not isinstance(data, Mapping):
        what = "empty" if data is None else _kind(data)
        problems.add(
            "",
            f"the file must be a mapping with name, list, senders and steps, not {what}",
        )
        raise CampaignFileError(problems.lines, source)
    top = _mapping(data, "", TOP_KEYS, problems, required=TOP_REQUIRED) or {}
    spec: dict[str, Any] = {}
    # Names are stored without surrounding blanks (as `ensure_list` stores a list's name).
    if "name" in top:
        name = _text(top["name"], "name", problems, one_line=True, limit=MAX_NAME)
        spec["name"] = name and name.strip()
    spec["description"] = _text(top.get("description"), "description", problems, optional=True)
    if "list" in top:
        list_name = _text(top["list"], "list", problems, one_line=True, limit=MAX_LIST_NAME)
        spec["list"] = list_name and list_name.strip()
    if "senders" in top:
        spec["senders"] = _senders(top["senders"], problems)
    spec["from_name"] = _text(
        top.get("from_name"), "from_name", problems, optional=True, one_line=True, limit=200
    )
    spec["reply_to"] = _address(top.get("reply_to"), "reply_to", problems, optional=True)
    spec["timezone"] = _timezone(top.get("timezone", DEFAULTS["timezone"]), "timezone", problems)
    spec["schedule"] = _schedule(top.get("schedule", {}), spec["timezone"], problems)
    limits = _mapping(top.get("limits", {}), "limits", LIMITS_KEYS, problems)
    if limits is not None:
        daily = limits.get("daily", DEFAULTS["limits"]["daily"])
        spec["limits"] = {"daily": _positive_int(daily, "limits.daily", problems, 10_000_000)}
    tracking = _mapping(top.get("tracking", {}), "tracking", TRACKING_KEYS, problems)
    if tracking is not None:
        spec["tracking"] = {
            key: _flag(tracking.get(key, True), f"tracking.{key}", problems)
            for key in TRACKING_KEYS
        }
    spec["stop_on_reply"] = _choice(
        top.get("stop_on_reply", DEFAULTS["stop_on_reply"]),
        "stop_on_reply",
        STOP_ON_REPLY,
        problems,
    )
    spec["approval"] = _choice(
        top.get("approval", DEFAULTS["approval"]), "approval", APPROVAL, problems
    )
    if "steps" in top:
        spec["steps"] = _steps(top["steps"], problems)
    if problems.lines:
        raise CampaignFileError(problems.lines, source)
    normalized = {key: spec[key] for key in TOP_KEYS}
    return CampaignSpec(source, normalized, spec_sha256(normalized))


def _senders(value: object, problems: _Problems) -> list[str] | None:
    if not isinstance(value, list) or not value:
        problems.add(
            "senders",
            f"must be a list of at least one sender address, like [alice@acme.example], "
            f"not {_kind(value)}",
        )
        return None
    senders: list[str] = []
    for index, item in enumerate(value, start=1):
        address = _address(item, f"senders[#{index}]", problems)
        if address is None:
            continue
        if address.lower() in (s.lower() for s in senders):
            problems.add(f"senders[#{index}]", f"{shown(address)} is listed twice")
            continue
        senders.append(address)
    return senders


def _schedule(value: object, tz: str | None, problems: _Problems) -> dict[str, Any] | None:
    raw = _mapping(value, "schedule", SCHEDULE_KEYS, problems)
    if raw is None:
        return None
    defaults = DEFAULTS["schedule"]
    strategy = _choice(
        raw.get("strategy", defaults["strategy"]), "schedule.strategy", STRATEGIES, problems
    )
    moments: dict[str, str | None] = {}
    for key in ("start_at", "end_at"):
        given = raw.get(key)
        moments[key] = None if given is None else _moment(given, f"schedule.{key}", problems)
    if strategy == "scheduled" and raw.get("start_at") is None:
        problems.add(
            "schedule.start_at", "strategy scheduled needs a start_at (when sending may begin)"
        )
    start, end = moments["start_at"], moments["end_at"]
    if start and end and tz and resolve_moment(end, tz) <= resolve_moment(start, tz):
        problems.add("schedule.end_at", f"{end} is not after start_at {start}")
    return {
        "strategy": strategy,
        "start_at": start,
        "end_at": end,
        "window": _window(raw.get("window", defaults["window"]), "schedule.window", problems),
        "days": _days(raw.get("days", defaults["days"]), "schedule.days", problems),
    }


# -- what only the database knows ---------------------------------------------------------------

_SENDERS = sa.text(
    """
    select id, email, display_name, is_active from app.sender_accounts
    where lower(email) = any(:emails)
    """
)
_LIST_ID = sa.text("select id from app.contact_lists where name = :name")
# Which contact fields hold a value for at least one member, and how many members there are.
# The column names come from CONTACT_FIELDS (identifiers of this module, never user input).
_FIELDS_PRESENT = sa.text(
    "select count(*) as members, "
    + ", ".join(f"bool_or(c.{name} is not null) as {name}" for name in CONTACT_FIELDS)
    + """
    from app.contact_list_members m join app.contacts c on c.id = m.contact_id
    where m.list_id = :list_id
    """
)
_ATTRIBUTE_KEYS = sa.text(
    """
    select distinct k.key
    from app.contact_list_members m
    join app.contacts c on c.id = m.contact_id
    cross join lateral jsonb_object_keys(c.attributes) as k(key)
    where m.list_id = :list_id
    """
)

#: Names every template sees whatever the contact: the attributes mapping and Jinja's globals.
_ALWAYS_DEFINED = frozenset({"attributes", *SandboxedEnvironment().globals})
#: Filters and tests under which a missing variable is not an error.


@dataclass(frozen=True)
class CheckResult:
    """What `check` found: sender account ids by lower-cased address, the list (None: new),
    and notes worth telling the person applying (nothing wrong)."""

    sender_ids: dict[str, uuid.UUID]
    list_id: uuid.UUID | None
    notes: tuple[str, ...] = ()


def check(conn: Connection, spec: CampaignSpec) -> CheckResult:
    """What only the tenant's database can tell: every sender account exists (in this tenant),
    and every template variable without a default is held by at least one contact of the list.

    Raises `CampaignFileError` listing every problem. An empty or new list cannot say which
    variables its contacts will have: that is a note, and launch renders every contact.
    """
    problems = _Problems(spec.source)
    notes: list[str] = []
    data = spec.data
    wanted: dict[str, str] = {}  # lower-cased address -> where it is named first
    for index, address in enumerate(data["senders"], start=1):
        wanted.setdefault(address.lower(), f"senders[#{index}]")
    for step in data["steps"]:
        sender = step.get("email", {}).get("sender") if "email" in step else None
        if sender:
            wanted.setdefault(
                sender.lower(), f"steps[{shown(step['id'], MAX_STEP_ID)}].email.sender"
            )
    rows = {
        row.email.lower(): row for row in conn.execute(_SENDERS, {"emails": list(wanted)}).all()
    }
    for address, where in wanted.items():
        row = rows.get(address)
        if row is None:
            # Row-level security hides other tenants' accounts: to this tenant they do not exist.
            add = penguin_command(f"sender add {shell_word(address)}", current_tenant_name(conn))
            problems.add(
                where,
                f"sender account {shown(address)} does not exist in this tenant; add it with "
                f"`{add}`",
            )
        elif not row.is_active:
            resume = penguin_command(
                f"sender resume {shell_word(address)}", current_tenant_name(conn)
            )
            notes.append(f"sender account {shown(address)} is paused ({resume})")
    list_id = conn.execute(_LIST_ID, {"name": data["list"]}).scalar()
    list_name = shown(data["list"])
    if list_id is None:
        notes.append(
            f"list '{list_name}' does not exist yet: it is created empty; template variables "
            "are checked against its contacts at launch"
        )
    else:
        present = conn.execute(_FIELDS_PRESENT, {"list_id": list_id}).one()._mapping
        if present["members"] == 0:
            notes.append(
                f"list '{list_name}' has no contacts yet: template variables are checked "
                "against its contacts at launch"
            )
        else:
            keys = conn.execute(_ATTRIBUTE_KEYS, {"list_id": list_id}).scalars().all()
            available = (
                {name for name in CONTACT_FIELDS if present[name]}
                | {variable_name(key) for key in keys}
                | _ALWAYS_DEFINED
            )
            for where, source in _templates(data):
                try:
                    needed = template_variables(source, where=where)
                except TemplateRenderError as exc:  # checked at parse; a limit may still bite
                    problems.lines.append(f"{problems.source}: {exc}")
                    continue
                for name in sorted(needed - available):
                    problems.add(
                        where,
                        f"no contact of list '{list_name}' has {shown(name, 60)!r}; fix the "
                        f"name or give it a default: {{{{ {shown(name, 60)} | default('') }}}}",
                    )
    if problems.lines:
        raise CampaignFileError(problems.lines, spec.source)
    return CheckResult(
        {address: rows[address].id for address in wanted},
        list_id,
        tuple(f"{spec.source}: {note}" for note in notes),
    )


def _templates(data: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
    """(where, template source) of every email part of a normalized definition."""
    for step in data["steps"]:
        email = step.get("email")
        if email is None:
            continue
        label = f"steps[{shown(step['id'], MAX_STEP_ID)}].email"
        parts = (
            [(f"{label}.variants[#{i}]", v) for i, v in enumerate(email["variants"], start=1)]
            if "variants" in email
            else [(label, email)]
        )
        for where, part in parts:
            for key in ("subject", "text", "html"):
                if part.get(key) is not None:
                    yield f"{where}.{key}", part[key]


# -- apply ----------------------------------------------------------------------------------------

_CAMPAIGN_FOR_UPDATE = sa.text(
    "select id, status, spec, spec_sha256 from app.campaigns where name = :name for update"
)
_CREATE_CAMPAIGN = sa.text(
    """
    insert into app.campaigns (tenant_id, name, status, created_at, updated_at)
    values (app.current_tenant_id(), :name, 'draft', :now, :now)
    on conflict (tenant_id, name) do nothing
    returning id
    """
)
_UPDATE_CAMPAIGN = sa.text(
    """
    update app.campaigns set
        description = :description, list_id = :list_id, timezone = :timezone,
        send_strategy = :strategy, start_at = :start_at, end_at = :end_at,
        from_name = :from_name, reply_to = :reply_to, approval_required = :approval_required,
        spec = cast(:spec as jsonb), spec_sha256 = :spec_sha256, updated_at = :now
    where id = :id
    """
)
_UPSERT_SETTINGS = sa.text(
    """
    insert into app.campaign_settings
        (campaign_id, tenant_id, send_window_start, send_window_end, send_days, daily_limit,
         stop_on_reply, track_opens, track_clicks, updated_at)
    values
        (:campaign_id, app.current_tenant_id(), :window_start, :window_end,
         cast(:send_days as smallint[]), :daily_limit, :stop_on_reply, :track_opens,
         :track_clicks, :now)
    on conflict (tenant_id, campaign_id) do update set
        send_window_start = excluded.send_window_start,
        send_window_end = excluded.send_window_end, send_days = excluded.send_days,
        daily_limit = excluded.daily_limit, stop_on_reply = excluded.stop_on_reply,
        track_opens = excluded.track_opens, track_clicks = excluded.track_clicks,
        updated_at = excluded.updated_at
    """
)
_DELETE_SENDERS = sa.text("delete from app.campaign_senders where campaign_id = :campaign_id")
_INSERT_SENDER = sa.text(
    """
    insert into app.campaign_senders (tenant_id, campaign_id, sender_account_id, position)
    values (app.current_tenant_id(), :campaign_id, :sender_id, :position)
    """
)
_LIVE_STEPS = sa.text(
    "select id, key from app.campaign_steps where campaign_id = :campaign_id and removed_at is null"
)
# Enrollments that still stand on a step: removing it would strand them.
_STANDING = sa.text(
    """
    select current_step_id as step_id, count(*) as n from app.campaign_contacts
    where campaign_id = :campaign_id and status in ('enrolled', 'active', 'paused')
      and current_step_id = any(:step_ids)
    group by current_step_id
    """
)
# step_order is unique per campaign and not deferrable: live steps move out of the way first.
_PARK_ORDERS = sa.text(
    """
    update app.campaign_steps set step_order = step_order + 1000000
    where campaign_id = :campaign_id and removed_at is null
    """
)
_REMOVE_STEPS = sa.text(
    """
    update app.campaign_steps
    set removed_at = :now, step_order = null, next_step_id = null, true_next_step_id = null,
        false_next_step_id = null, updated_at = :now
    where id = any(:step_ids)
    """
)
_STEP_COLUMNS = """
    step_order = :step_order, name = :key, step_type = :step_type, template_id = null,
    subject = :subject, body_text = :body_text, body_html = :body_html,
    variants = cast(:variants as jsonb), sender_account_id = :sender_account_id,
    wait_duration = :wait_duration, wait_until = :wait_until,
    condition_rules = cast(:condition_rules as jsonb),
    action_payload = cast(:action_payload as jsonb), updated_at = :now
"""
_UPDATE_STEP = sa.text(f"update app.campaign_steps set {_STEP_COLUMNS} where id = :id")
_INSERT_STEP = sa.text(
    """
    insert into app.campaign_steps
        (tenant_id, campaign_id, key, step_order, name, step_type, subject, body_text, body_html,
         variants, sender_account_id, wait_duration, wait_until, condition_rules, action_payload,
         created_at, updated_at)
    values
        (app.current_tenant_id(), :campaign_id, :key, :step_order, :key, :step_type, :subject,
         :body_text, :body_html, cast(:variants as jsonb), :sender_account_id, :wait_duration,
         :wait_until, cast(:condition_rules as jsonb), cast(:action_payload as jsonb), :now, :now)
    returning id
    """
)
_LINK_STEP = sa.text(
    """
    update app.campaign_steps
    set next_step_id = :next_id, true_next_step_id = :true_id, false_next_step_id = :false_id
    where id = :id
    """
)


@dataclass(frozen=True)
class ApplyResult:
    """What `apply` did: `outcome` is created, updated or unchanged; step ids by change."""

    campaign_id: uuid.UUID
    name: str
    outcome: str
    status: str
    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def summary(self) -> str:
        """One line for a person: what happened to which campaign."""
        name = shown(self.name)
        if self.outcome == "unchanged":
            return f"campaign {name} unchanged ({self.status})"
        parts = [
            f"{len(ids)} step{'s' if len(ids) != 1 else ''} {what}"
            for what, ids in (
                ("added", self.added),
                ("changed", self.changed),
                ("removed", self.removed),
            )
            if ids
        ]
        detail = f": {', '.join(parts)}" if parts else ": settings only"
        return f"{self.outcome} campaign {name} ({self.status}){detail}"


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False)


def _step_values(
    step: Mapping[str, Any], position: int, tz: str, sender_ids: Mapping[str, uuid.UUID]
) -> dict[str, Any]:
    """The columns of a step row (every one, so a step that changes type keeps nothing old)."""
    kind = next(key for key in STEP_TYPES if key in step)
    values: dict[str, Any] = {
        "key": step["id"],
        "step_order": position,
        "step_type": kind,
        "subject": None,
        "body_text": None,
        "body_html": None,
        "variants": None,
        "sender_account_id": None,
        "wait_duration": None,
        "wait_until": None,
        "condition_rules": None,
        "action_payload": None,
    }
    if kind == "email":
        email = step["email"]
        if "variants" in email:
            values["variants"] = _json(email["variants"])
        else:
            values.update(
                subject=email["subject"], body_text=email["text"], body_html=email["html"]
            )
        if email["sender"]:
            values["sender_account_id"] = sender_ids[email["sender"].lower()]
    elif kind == "wait":
        wait = step["wait"]
        if isinstance(wait, str):
            values["wait_duration"] = parse_duration(wait)
        else:
            values["wait_until"] = resolve_moment(wait["until"], tz)
    elif kind == "condition":
        values["condition_rules"] = _json(step["condition"])
    else:
        values["action_payload"] = _json(step["action"])
    return values


def apply(conn: Connection, spec: CampaignSpec, now: datetime) -> ApplyResult:
    """Create or update the campaign `spec` defines, in the caller's tenant transaction.

    Runs `check` first; refuses (with `CampaignFileError`) a change to a completed campaign,
    changed steps or list of an active or scheduled one, and removing a step that enrollments
    stand on. Applying the definition the campaign already has changes nothing.
    """
    checked = check(conn, spec)
    data = spec.data
    current = conn.execute(_CAMPAIGN_FOR_UPDATE, {"name": spec.name}).one_or_none()
    created = False
    if current is None:
        new_id = conn.execute(_CREATE_CAMPAIGN, {"name": spec.name, "now": now}).scalar()
        if new_id is None:  # created meanwhile by another apply: take its lock and go on
            current = conn.execute(_CAMPAIGN_FOR_UPDATE, {"name": spec.name}).one()
        else:
            created = True
    campaign_id = new_id if created else current.id
    status = "draft" if created else current.status
    old: dict[str, Any] | None = None if created else current.spec
    if not created and current.spec_sha256 == spec.sha256:
        return ApplyResult(campaign_id, spec.name, "unchanged", status, notes=checked.notes)

    problems = _Problems(spec.source)
    name = shown(spec.name)
    steps_changed = old is None or old.get("steps") != data["steps"]
    if status == "completed":
        clone = f"campaign clone {shell_word(spec.name)} NEW_NAME"
        problems.add(
            "",
            f"campaign {name} is completed and takes no changes; copy it with "
            f"`{penguin_command(clone, current_tenant_name(conn))}` "
            "and apply to the copy",
        )
    elif status in ("active", "scheduled"):
        pause = penguin_command(
            f"campaign pause {shell_word(spec.name)}", current_tenant_name(conn)
        )
        if steps_changed:
            problems.add(
                "steps",
                f"campaign {name} is {status}: its steps cannot change while it runs; "
                f"pause it first: {pause}",
            )
        if old is not None and old.get("list") != data["list"]:
            problems.add(
                "list",
                f"campaign {name} is {status}: its list cannot change while it runs; "
                f"pause it first: {pause}",
            )
    if problems.lines:
        raise CampaignFileError(problems.lines, spec.source)

    added: list[str] = []
    changed: list[str] = []
    removed: list[str] = []
    if steps_changed:
        added, changed, removed = _apply_steps(conn, campaign_id, spec, old, checked, now)
    _apply_settings(conn, campaign_id, spec, checked, now)
    return ApplyResult(
        campaign_id,
        spec.name,
        "created" if created else "updated",
        status,
        tuple(added),
        tuple(changed),
        tuple(removed),
        checked.notes,
    )


def _apply_settings(
    conn: Connection,
    campaign_id: uuid.UUID,
    spec: CampaignSpec,
    checked: CheckResult,
    now: datetime,
) -> None:
    data = spec.data
    schedule = data["schedule"]
    tz = data["timezone"]
    list_id = checked.list_id or ensure_list(conn, data["list"], now)
    conn.execute(
        _UPDATE_CAMPAIGN,
        {
            "id": campaign_id,
            "description": data["description"],
            "list_id": list_id,
            "timezone": tz,
            "strategy": schedule["strategy"],
            "start_at": schedule["start_at"] and resolve_moment(schedule["start_at"], tz),
            "end_at": schedule["end_at"] and resolve_moment(schedule["end_at"], tz),
            "from_name": data["from_name"],
            "reply_to": data["reply_to"],
            "approval_required": data["approval"] == "required",
            "spec": _json(data),
            "spec_sha256": spec.sha256,
            "now": now,
        },
    )
    window_start, window_end = rules.parse_window(schedule["window"])
    conn.execute(
        _UPSERT_SETTINGS,
        {
            "campaign_id": campaign_id,
            "window_start": window_start,
            "window_end": window_end,
            "send_days": sorted(rules.parse_days(schedule["days"])),
            "daily_limit": data["limits"]["daily"],
            "stop_on_reply": data["stop_on_reply"],
            "track_opens": data["tracking"]["opens"],
            "track_clicks": data["tracking"]["clicks"],
            "now": now,
        },
    )
    conn.execute(_DELETE_SENDERS, {"campaign_id": campaign_id})
    conn.execute(
        _INSERT_SENDER,
        [
            {
                "campaign_id": campaign_id,
                "sender_id": checked.sender_ids[address.lower()],
                "position": position,
            }
            for position, address in enumerate(data["senders"], start=1)
        ],
    )


def _apply_steps(
    conn: Connection,
    campaign_id: uuid.UUID,
    spec: CampaignSpec,
    old: Mapping[str, Any] | None,
    checked: CheckResult,
    now: datetime,
) -> tuple[list[str], list[str], list[str]]:
    """Upsert the steps by id, soft-delete the others, resolve the links; (added, changed,
    removed) step ids."""
    steps = spec.steps
    live = {row.key: row.id for row in conn.execute(_LIVE_STEPS, {"campaign_id": campaign_id})}
    wanted = {step["id"] for step in steps}
    gone = {key: step_id for key, step_id in live.items() if key not in wanted}
    if gone:
        standing = {
            row.step_id: row.n
            for row in conn.execute(
                _STANDING, {"campaign_id": campaign_id, "step_ids": list(gone.values())}
            )
        }
        problems = _Problems(spec.source)
        for key, step_id in gone.items():
            if standing.get(step_id):
                n = standing[step_id]
                problems.add(
                    f"steps[{shown(key, MAX_STEP_ID)}]",
                    f"removing this step is refused: {n:,} enrollment{'s' if n != 1 else ''} "
                    f"{'stand' if n != 1 else 'stands'} on it; keep the step (it may change) "
                    "until they have moved on",
                )
        if problems.lines:
            raise CampaignFileError(problems.lines, spec.source)
        conn.execute(_REMOVE_STEPS, {"step_ids": list(gone.values()), "now": now})
    conn.execute(_PARK_ORDERS, {"campaign_id": campaign_id})
    old_steps = {s["id"]: s for s in (old or {}).get("steps", [])}
    tz = spec.data["timezone"]
    ids: dict[str, uuid.UUID] = {}
    added: list[str] = []
    changed: list[str] = []
    for position, step in enumerate(steps, start=1):
        values = {
            **_step_values(step, position, tz, checked.sender_ids),
            "campaign_id": campaign_id,
            "now": now,
        }
        key = step["id"]
        if key in live:
            conn.execute(_UPDATE_STEP, {**values, "id": live[key]})
            ids[key] = live[key]
            if old_steps.get(key) != step:
                changed.append(key)
        else:
            ids[key] = conn.execute(_INSERT_STEP, values).scalar_one()
            added.append(key)
    links = _links(steps)
    conn.execute(
        _LINK_STEP,
        [_link_values(step, links[step["id"]], ids) for step in steps],
    )
    return added, changed, sorted(gone)


def _link_values(
    step: Mapping[str, Any], targets: list[str | None], ids: Mapping[str, uuid.UUID]
) -> dict[str, Any]:
    resolved = [None if target is None else ids[target] for target in targets]
    if "condition" in step:
        return {
            "id": ids[step["id"]],
            "next_id": None,
            "true_id": resolved[0],
            "false_id": resolved[1],
        }
    return {"id": ids[step["id"]], "next_id": resolved[0], "true_id": None, "false_id": None}


# -- export and clone -----------------------------------------------------------------------------

_SPEC_BY_NAME = sa.text("select id, status, spec from app.campaigns where name = :name")


class _Dumper(yaml.SafeDumper):
    """Block style for text of several lines, flow style for short lists and mappings of plain
    values (`days: [mon, tue]`, `condition: {opened: intro}`), lists indented under their key."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        return super().increase_indent(flow, False)


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


def _represent_list(dumper: yaml.SafeDumper, value: list) -> yaml.Node:
    flow = bool(value) and all(
        isinstance(item, str | int | float | bool) and "\n" not in str(item) for item in value
    )
    return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=flow)


def _represent_dict(dumper: yaml.SafeDumper, value: dict) -> yaml.Node:
    plain = all(
        isinstance(item, str | int | float | bool | None) and "\n" not in str(item)
        for item in value.values()
    )
    short = len(value) <= 3 and len(json.dumps(value, ensure_ascii=False)) <= 60
    flow = bool(value) and plain and short and "id" not in value  # a step stays a block
    return dumper.represent_mapping("tag:yaml.org,2002:map", value, flow_style=flow)


_Dumper.add_representer(str, _represent_str)
_Dumper.add_representer(list, _represent_list)
_Dumper.add_representer(dict, _represent_dict)


def _in_file_order(data: Mapping[str, Any]) -> dict[str, Any]:
    """A stored definition (jsonb keeps no key order) in the issue's key order."""
    ordered = {key: data[key] for key in TOP_KEYS if key in data}
    ordered["schedule"] = {k: data["schedule"][k] for k in SCHEDULE_KEYS}
    ordered["tracking"] = {k: data["tracking"][k] for k in TRACKING_KEYS}
    steps = []
    for step in data["steps"]:
        step = {key: step[key] for key in STEP_KEYS if key in step}
        if "email" in step:
            email = step["email"]
            if "variants" in email:
                step["email"] = {
                    "variants": [{k: v[k] for k in VARIANT_KEYS} for v in email["variants"]],
                    "sender": email["sender"],
                }
            else:
                step["email"] = {k: email[k] for k in ("subject", "text", "html", "sender")}
        steps.append(step)
    ordered["steps"] = steps
    return ordered


def dump(data: Mapping[str, Any]) -> str:
    """A normalized definition as campaign-file YAML (what `export` prints)."""
    return yaml.dump(
        _in_file_order(data),
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
        width=100,
    )


def _stored(conn: Connection, name: str) -> sa.Row:
    row = conn.execute(_SPEC_BY_NAME, {"name": name}).one_or_none()
    if row is None:
        raise CampaignFileError(
            [
                f"no campaign named {shown(name)!r} in this tenant; "
                f"see `{penguin_command('campaign list', current_tenant_name(conn))}`"
            ]
        )
    if row.spec is None:
        raise CampaignFileError(
            [
                f"campaign {shown(name)} was made before campaign files and has no stored "
                "definition; write a file for it and apply it"
            ]
        )
    return row


def export(conn: Connection, name: str) -> str:
    """The campaign-file YAML of campaign `name` as last applied (every default written out);
    applying it changes nothing."""
    return dump(_stored(conn, name).spec)


def clone(conn: Connection, name: str, new_name: str, now: datetime) -> ApplyResult:
    """Copy campaign `name`'s definition to a new draft campaign `new_name` (no enrollments,
    no approvals)."""
    data = dict(_stored(conn, name).spec)
    data["name"] = new_name
    source = f"clone of {shown(name)}"
    spec = parse(data, source)
    if conn.execute(_SPEC_BY_NAME, {"name": spec.name}).one_or_none() is not None:
        raise CampaignFileError(
            [f"{source}: name: campaign {shown(new_name)} already exists; choose another name"],
            source,
        )
    return apply(conn, spec, now)


# -- approvals ------------------------------------------------------------------------------------

_CAMPAIGN_BY_NAME = sa.text(
    "select id, status, approval_required, spec_sha256 from app.campaigns where name = :name"
)
_CAMPAIGN_BY_ID = sa.text(
    "select id, name, approval_required, spec_sha256 from app.campaigns where id = :id"
)
# approval_role stays NULL: NULLs never collide in the table's unique (campaign, approver, role),
# so every decision is kept, one row each.
_RECORD_DECISION = sa.text(
    """
    insert into app.campaign_approvals
        (tenant_id, campaign_id, approver, status, comments, requested_at, reviewed_at,
         spec_sha256)
    values (app.current_tenant_id(), :campaign_id, :approver, :status, :comments, :now, :now,
            :spec_sha256)
    """
)
# The latest decision first; of two at the same moment, a rejection counts (the safe side).
_DECISIONS = sa.text(
    """
    select approver, status, comments, reviewed_at, spec_sha256 = :spec_sha256 as current
    from app.campaign_approvals
    where campaign_id = :campaign_id and status in ('approved', 'rejected')
    order by reviewed_at desc, (status = 'rejected') desc
    """
)

MAX_APPROVER = 200
MAX_COMMENT = 2000


@dataclass(frozen=True)
class Decision:
    """An approval or rejection recorded for the definition with fingerprint `spec_sha256`."""

    campaign_id: uuid.UUID
    status: str
    spec_sha256: str
    note: str | None = None


def approve(
    conn: Connection, name: str, by: str, now: datetime, comment: str | None = None
) -> Decision:
    """Record that `by` approved campaign `name` as currently defined."""
    return _decide(conn, name, "approved", by, comment, now)


def reject(conn: Connection, name: str, by: str, comment: str, now: datetime) -> Decision:
    """Record that `by` rejected campaign `name` as currently defined; `comment` says why."""
    return _decide(conn, name, "rejected", by, comment, now)


def _decide(
    conn: Connection, name: str, status: str, by: str, comment: str | None, now: datetime
) -> Decision:
    problems = _Problems(f"campaign {shown(name)}")
    approver = _text(by, "--by", problems, one_line=True, limit=MAX_APPROVER)
    if status == "rejected" and (comment is None or not comment.strip()):
        problems.add("--comment", "a rejection needs a comment saying what to change")
    elif comment is not None:
        comment = _text(comment, "--comment", problems, limit=MAX_COMMENT)
    row = conn.execute(_CAMPAIGN_BY_NAME, {"name": name}).one_or_none()
    if row is None:
        listing = penguin_command("campaign list", current_tenant_name(conn))
        problems.add("", f"no such campaign in this tenant; see `{listing}`")
    elif row.spec_sha256 is None:
        problems.add(
            "", "has no definition applied from a file, so there is nothing to approve; apply one"
        )
    if problems.lines:
        raise CampaignFileError(problems.lines, problems.source)
    conn.execute(
        _RECORD_DECISION,
        {
            "campaign_id": row.id,
            "approver": approver,
            "status": status,
            "comments": comment,
            "now": now,
            "spec_sha256": row.spec_sha256,
        },
    )
    note = (
        None
        if row.approval_required
        else "this campaign does not require approval (approval: none); recorded anyway"
    )
    return Decision(row.id, status, row.spec_sha256, note)


def approval_state(conn: Connection, campaign_id: uuid.UUID) -> tuple[bool, str]:
    """Whether the campaign may launch as far as approval goes, and why (for messages).

    Approved means: approval is not required, or the latest decision recorded for the
    definition as it is now (its `spec_sha256`) is an approval. A change to the file after an
    approval needs a new one.
    """
    row = conn.execute(_CAMPAIGN_BY_ID, {"id": campaign_id}).one_or_none()
    if row is None:
        raise LookupError(f"no campaign with id {campaign_id}")
    if not row.approval_required:
        return True, "approval is not required"
    how = penguin_command(
        f"campaign approve {shell_word(row.name)} --by WHO", current_tenant_name(conn)
    )
    if row.spec_sha256 is None:
        return (
            False,
            f"approval is required and no definition has been applied; apply it, then {how}",
        )
    decisions = conn.execute(
        _DECISIONS, {"campaign_id": campaign_id, "spec_sha256": row.spec_sha256}
    ).all()
    for decision in decisions:
        if not decision.current:
            continue
        who = f"{shown(decision.approver)} at {decision.reviewed_at:%Y-%m-%d %H:%M %Z}"
        if decision.status == "approved":
            return True, f"approved by {who}"
        reason = f": {shown(decision.comments, 200)}" if decision.comments else ""
        return False, f"rejected by {who}{reason}; change the file, apply it, then {how}"
    if decisions:
        return False, (
            f"approval is required: the definition changed since the last decision "
            f"({decisions[0].status} by {shown(decisions[0].approver)}); {how}"
        )
    return False, f"approval is required and nobody has approved it yet; {how}"


# -- the list of campaigns ------------------------------------------------------------------------

# Sends today: `campaign_sends_today`, the rule of the campaign daily limit.
_CAMPAIGNS = sa.text(
    """
    select c.id, c.name, c.status, c.timezone, l.name as list_name, st.daily_limit,
           (select count(*) from app.campaign_steps s
            where s.campaign_id = c.id and s.removed_at is null) as steps,
           (select count(*) from app.campaign_contacts cc where cc.campaign_id = c.id) as enrolled
    from app.campaigns c
    left join app.contact_lists l on l.id = c.list_id
    left join app.campaign_settings st on st.campaign_id = c.id
    order by c.name
    """
)


@dataclass(frozen=True)
class CampaignRow:
    id: uuid.UUID
    name: str
    status: str
    list_name: str | None
    steps: int
    enrolled: int
    sent_today: int
    daily_limit: int | None


def list_campaigns(conn: Connection, now: datetime) -> list[CampaignRow]:
    """The tenant's campaigns with their step count, enrollments and sends today."""
    rows = conn.execute(_CAMPAIGNS).all()
    sent = campaign_sends_today(conn, {row.id: row.timezone for row in rows}, now)
    return [
        CampaignRow(
            row.id,
            row.name,
            row.status,
            row.list_name,
            row.steps,
            row.enrolled,
            sent[row.id],
            row.daily_limit,
        )
        for row in rows
    ]
