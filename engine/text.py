"""User text in messages: whatever a user typed or uploaded (a header, an address, a file name,
a template) appears in an error as one readable line of bounded length.

User data is arbitrary: it may hold control characters (a terminal escape, a NUL, half a
binary file) or run to megabytes. Every piece of it that goes into a message passes through
`shown` (or `shown_list`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

#: Characters of one value quoted in a message.
SHOWN_CHARS = 80
#: Values of a list (the columns of a file) named in a message.
SHOWN_ITEMS = 20


def shown(text: object, limit: int = SHOWN_CHARS) -> str:
    """`text` safe to put in a message: non-printable characters escaped (`\\x1b`, `\\n`,
    `\\u200b`), and at most `limit` characters of it, the cut marked with `…`."""
    value = str(text)
    head = value[: limit + 1]  # escaping only lengthens: the rest can never be shown
    escaped = "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in head
    )
    if len(escaped) > limit or len(value) > len(head):
        return escaped[: limit - 1] + "…"
    return escaped


def readable_name(name: str) -> str:
    """A file or folder name as text the database can store: bytes that are not UTF-8 (a name
    made on another system, which Python holds as lone surrogates) become U+FFFD."""
    try:
        raw = os.fsencode(name)
    except UnicodeEncodeError:  # a lone surrogate that did not come from the file system
        raw = name.encode("utf-8", "replace")
    return raw.decode("utf-8", "replace")


def shown_list(items: Iterable[object], limit: int = SHOWN_ITEMS) -> str:
    """The first `limit` items, each `shown`, comma-separated, saying how many are left out."""
    values = list(items)
    text = ", ".join(shown(v, 40) for v in values[:limit])
    if len(values) > limit:
        text += f", … ({len(values) - limit:,} more)"
    return text


def storable(text: str) -> str:
    """`text` as PostgreSQL can store it in `text` or `json`: no NUL (U+FFFD instead), no lone
    surrogate (an escape like `\\ud800` in JSON decodes to one; `?` instead)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def first_line(exc: BaseException) -> str:
    """An error's first line for a report or a log line (its repr when it has no message)."""
    return (str(exc).splitlines() or [repr(exc)])[0]


#: Hex digits of an id that name it in a command (`penguin uploads rejects 0193`).
MIN_ID_PREFIX = 4


def id_prefix(prefix: str, noun: str = "batch id") -> str:
    """The hex digits of an id's start as typed (hyphens ignored), lowercased. Raises
    `ValueError` (its message follows the quoted prefix) for one that is not hex or too short."""
    article = "an" if noun[0] in "aeiou" else "a"
    digits = prefix.strip().replace("-", "").lower()
    if not digits or any(c not in "0123456789abcdef" for c in digits) or len(digits) > 32:
        raise ValueError(f"is not {article} {noun}")
    if len(digits) < MIN_ID_PREFIX:
        raise ValueError(
            f"is too short: give at least {MIN_ID_PREFIX} hex digits of {article} {noun}"
        )
    return digits
