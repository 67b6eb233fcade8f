"""Files a user names: opened for reading only when they are regular files, written with an
error that says what to do.

Every command that reads a user's file (`penguin upload`, `penguin events import`,
`penguin campaign apply`, the inboxes) opens it with `open_input`, so the same rules hold
everywhere:

* the file is opened without blocking and checked with `fstat` on what was opened (no race
  between a check and the open): a FIFO would block the command forever, `/dev/zero` never
  ends, a folder cannot be read, so each of them is refused, naming the path and what it is;
* with `max_bytes`, a file over the cap is refused before anything of it is read, naming its
  size and the cap.

The inboxes take only regular files inside them: `engine.inbox` refuses an entry that is a
symbolic link, a FIFO or a device before its import starts (`not_regular`).

`write_output` writes a command's output file (`-o`), or says in one line why it cannot.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

from engine.text import shown

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB


class UserFileError(ValueError):
    """A file a user named that cannot be used; the message names it and says what to do."""


def size_text(n: int) -> str:
    """A size as a person reads it: `1.5 MiB`, `64 MiB`, `900 bytes`."""
    for unit, name in ((GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")):
        if n >= unit:
            value = n / unit
            return f"{value:,.0f} {name}" if value == int(value) else f"{value:,.1f} {name}"
    return f"{n:,} bytes"


def kind_of(mode: int) -> str:
    """What a file that is not a regular file is, in words."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def not_a_file(label: str, mode: int) -> str:
    """The message for `label`, which is `mode` and not a regular file."""
    return f"{label}: is {kind_of(mode)}, not a file; give the path of a regular file"


def open_input(
    path: Path,
    *,
    label: str | None = None,
    max_bytes: int | None = None,
    what: str = "a file",
    hint: str = "",
    follow_links: bool = True,
) -> BinaryIO:
    """`path` opened for reading in binary, once it is known to be a regular file of at most
    `max_bytes`; `UserFileError` naming `label` (default: the path) otherwise.

    `what` names the kind of file in the size message ("an upload", "a campaign file"), `hint`
    what to do with a bigger one. An inbox passes `follow_links=False`: its entry was checked
    to be no link, but may have been replaced by one since, so a link is refused again here,
    where the file is opened.
    """
    label = label if label is not None else shown(str(path), 200)
    nonblocking = getattr(os, "O_NONBLOCK", 0)  # POSIX: opening a FIFO returns at once
    flags = os.O_RDONLY | nonblocking | getattr(os, "O_NOCTTY", 0)
    if not follow_links:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise UserFileError(f"{label}: no such file") from None
    except OSError as exc:
        if not follow_links and exc.errno == errno.ELOOP:
            raise UserFileError(not_a_file(label, stat.S_IFLNK)) from None
        raise UserFileError(f"{label}: cannot be opened ({exc.strerror or exc})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UserFileError(not_a_file(label, info.st_mode))
        if max_bytes is not None and info.st_size > max_bytes:
            raise UserFileError(too_big(label, info.st_size, max_bytes, what, hint))
        if nonblocking:
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def too_big(label: str, size: int, cap: int, what: str = "a file", hint: str = "") -> str:
    """The message for `label` of `size` bytes, over the `cap` for `what`; `hint` says what
    to do instead."""
    return f"{label}: the file is {size_text(size)}; {what} may be at most {size_text(cap)}" + (
        f"; {hint}" if hint else ""
    )


def write_output(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to `path`, a command's output file; `UserFileError` in one line
    saying why it cannot be written and what to do."""
    label = shown(str(path), 200)
    try:
        path.write_text(text, encoding="utf-8")
    except IsADirectoryError:
        raise UserFileError(
            f"cannot write {label}: it is a folder; give a file name, e.g. {label}/rejects.csv"
        ) from None
    except FileNotFoundError:
        raise UserFileError(
            f"cannot write {label}: its folder {shown(str(path.parent), 200)} does not exist; "
            "create it first or choose another path"
        ) from None
    except NotADirectoryError:
        raise UserFileError(
            f"cannot write {label}: a part of its path is a file, not a folder"
        ) from None
    except OSError as exc:
        raise UserFileError(f"cannot write {label}: {exc.strerror or exc}") from None
