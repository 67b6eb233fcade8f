"""Signed tokens of the tracking links, and the secret they are signed with.

A token names the tenant and the message it was made for (and, for a click, which link of the
message and where it goes): the server trusts nothing else in a request. Each kind has its own
salt, so an open token cannot be used as an unsubscribe token, and the click target is inside
the signature, so a click link can only ever redirect where the message pointed. A forged or
altered token does not verify and the server answers 404 without recording anything.

Tokens do not expire: a link in a message read a year later still works (an unsubscribe link
must). So a key is rotated, not replaced: new links are signed with the current key
(`PENGUIN_SECRET_KEY`, or the one stored under PENGUIN_HOME) and the server still verifies
links signed with the keys it lists in `PENGUIN_SECRET_KEY_PREVIOUS` (comma-separated, most
recent first). A link signed with a key in neither is refused.

The payload is binary (two UUIDs, then the link's number and the URL) in URL-safe
base64, signed with HMAC-SHA256 by itsdangerous.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from itsdangerous import BadSignature, Signer, want_bytes

if TYPE_CHECKING:
    from engine.config import Settings

#: The file under PENGUIN_HOME holding the secret key when PENGUIN_SECRET_KEY is unset.
SECRET_FILE = "secret_key"

#: A usable secret: at least this many characters (secrets.token_urlsafe(32) gives 43).
MIN_SECRET_LENGTH = 32


class SecretKeyError(ValueError):
    """The secret key given cannot sign links; the message says which and why."""


def secret_key(home: Path, configured: str | None) -> str:
    """The key tracking links are signed with: `configured` (PENGUIN_SECRET_KEY) when set, else
    the one stored in `home/secret_key`, generated there on first use (readable by its owner
    only; created atomically, so two processes starting at once agree on one key)."""
    if configured:
        if len(configured) < MIN_SECRET_LENGTH:
            raise SecretKeyError(
                f"PENGUIN_SECRET_KEY is {len(configured)} characters long; use at least "
                f"{MIN_SECRET_LENGTH} (e.g. python -c 'import secrets; "
                "print(secrets.token_urlsafe(32))')"
            )
        return configured
    path = home / SECRET_FILE
    try:
        key = path.read_text().strip()
    except FileNotFoundError:
        home.mkdir(parents=True, exist_ok=True)
        tmp = home / f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
            f.flush()
            os.fsync(f.fileno())  # never an empty key file after a crash
        try:
            os.link(tmp, path)  # fails if another process stored its key first: theirs wins
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links: the first to rename wins
            if not path.exists():
                os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        key = path.read_text().strip()
    if len(key) < MIN_SECRET_LENGTH:
        raise SecretKeyError(
            f"{path} holds a key of {len(key)} characters; delete the file to have a new one "
            "made (links already sent stop working) or set PENGUIN_SECRET_KEY"
        )
    return key


def tokens_for(settings: Settings) -> Tokens:
    """The tokens of this installation: signed with its current key, verified with that key
    and its previous ones."""
    current = secret_key(settings.home, settings.secret_key)
    return Tokens(current, previous=settings.previous_secret_keys)


class Part(IntEnum):
    """Which alternative of a message a click link is in: a reader sees one of them."""

    HTML = 0
    TEXT = 1


class Kind(StrEnum):
    OPEN = "open"
    CLICK = "click"
    UNSUBSCRIBE = "unsubscribe"


@dataclass(frozen=True)
class Token:
    """What a verified token says."""

    kind: Kind
    tenant_id: uuid.UUID
    message_id: uuid.UUID
    #: A click: the part its link is in, the link's number in that part (from 0), how many
    #: links the part has, and where the link goes.
    link: int | None = None
    links: int | None = None
    url: str | None = None
    part: Part | None = None


_LINK = struct.Struct(">HHB")


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _unb64(data: bytes) -> bytes:
    return base64.urlsafe_b64decode(data + b"=" * (-len(data) % 4))


class _Signer(Signer):
    """itsdangerous' Signer, its derived keys computed once instead of at every token (a
    third of the cost of reading one)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._derived: dict[bytes | None, bytes] = {}

    def derive_key(self, secret_key: str | bytes | None = None) -> bytes:
        cache_key = None if secret_key is None else want_bytes(secret_key)
        key = self._derived.get(cache_key)
        if key is None:
            key = self._derived[cache_key] = super().derive_key(secret_key)
        return key


class Tokens:
    """Makes tokens with the `secret` key; reads those of `secret` and of the `previous` keys
    (most recent first). itsdangerous signs with the last key of its list and tries them all,
    newest first, so a current link costs one HMAC as before and only an old one costs more."""

    def __init__(self, secret: str, previous: Sequence[str] = ()) -> None:
        keys = [*reversed(previous), secret]
        self._signers = {
            kind: _Signer(keys, salt=f"penguinmails.{kind}", digest_method=hashlib.sha256)
            for kind in Kind
        }

    def make(
        self,
        kind: Kind,
        tenant_id: uuid.UUID,
        message_id: uuid.UUID,
        *,
        link: int = 0,
        links: int = 0,
        url: str = "",
        part: Part = Part.HTML,
    ) -> str:
        payload = tenant_id.bytes + message_id.bytes
        if kind is Kind.CLICK:
            payload += _LINK.pack(min(link, 65535), min(links, 65535), part) + url.encode()
        return self._signers[kind].sign(_b64(payload)).decode()

    def read(self, kind: Kind, token: str) -> Token | None:
        """The token's contents, or None when it was not made by `make(kind, ...)` with one of
        these keys."""
        try:
            payload = _unb64(self._signers[kind].unsign(token.encode("ascii")))
        except (BadSignature, UnicodeEncodeError, ValueError):
            return None
        if len(payload) < 32 or (kind is not Kind.CLICK and len(payload) != 32):
            return None
        tenant_id, message_id = uuid.UUID(bytes=payload[:16]), uuid.UUID(bytes=payload[16:32])
        if kind is not Kind.CLICK:
            return Token(kind, tenant_id, message_id)
        if len(payload) < 32 + _LINK.size:
            return None
        link, links, part = _LINK.unpack_from(payload, 32)
        try:
            url = payload[32 + _LINK.size :].decode()
            chosen = Part(part)
        except (UnicodeDecodeError, ValueError):
            return None
        return Token(kind, tenant_id, message_id, link=link, links=links, url=url, part=chosen)
