"""The messenger seam: build RFC 5322 messages and deliver them over SMTP (aiosmtplib).

A `Courier` lives as long as one engine pass and keeps, per SMTP server, a pool of at most
`per_server` connections, reused from one `send` call (batch) to the next; at most
`concurrency` conversations run at once over all servers. What must hold:

- A connection that returned an error (any SMTP error reply, a timeout, a socket error) is
  closed, never reused. A healthy one is reset (RSET) only if a transaction may be open on it,
  and replaced after `messages_per_connection` messages, since servers limit that.
- A message's conversation starts only once a connection is ready, and the job's `before`
  callback runs right before it: the engine marks the row `sending` there, so a crash leaves in
  doubt only conversations that were under way. `after` runs right after the conversation and
  records the outcome before the slot goes to another job (at most `concurrency` messages are
  ever marked and not yet recorded). Callbacks that are coroutine functions run on the loop;
  others in threads; either way the database round trips of one slot overlap with the SMTP
  traffic of the others.
- A server that timed out, refused the connection or said it is unavailable (421 at the
  greeting) is down for the rest of the courier's life: its other jobs get
  `Outcome.SERVER_DOWN` at once, without another connection attempt, so a tarpit costs one
  timeout per pass, not one per message. A server that cannot be used for another reason
  (TLS, login) is likewise not tried again; its jobs are retried with that reason.
- Every network wait has a timeout (`CourierConfig.timeout`, per command and for connecting).

Internationalized addresses: when the server offers SMTPUTF8 (RFC 6531), a non-ASCII address
goes as it is, with the SMTPUTF8 MAIL option and the message serialized as UTF-8. When it does
not, a non-ASCII domain is written in ASCII (IDNA, `xn--`) in the envelope and the headers, and
an address whose local part is not ASCII cannot be sent: that one message is rejected with the
reason. Whatever goes wrong with one message ends that message only, never the batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import re
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime, formataddr
from enum import StrEnum
from types import TracebackType
from typing import Any

import aiosmtplib
import idna

from engine.senders import SmtpServer, cleartext_login_refusal

TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class OutgoingEmail:
    message_id: str  # without angle brackets
    sender_email: str
    sender_name: str | None
    recipient: str
    subject: str
    body_text: str
    body_html: str | None
    date: datetime
    headers: dict[str, str] = field(default_factory=dict)

    def to_message(self, sender: str | None = None, recipient: str | None = None) -> EmailMessage:
        """The message, with `sender`/`recipient` as written for the server (e.g. IDNA)."""
        msg = EmailMessage()
        msg["From"] = formataddr((self.sender_name or "", sender or self.sender_email))
        msg["To"] = recipient or self.recipient
        msg["Subject"] = self.subject
        msg["Date"] = _date_header(self.date)
        msg["Message-ID"] = f"<{self.message_id}>"
        for name, value in self.headers.items():
            msg[name] = value
        msg.set_content(self.body_text)
        if self.body_html:
            msg.add_alternative(self.body_html, subtype="html")
        return msg


class Outcome(StrEnum):
    SENT = "sent"
    #: The server refused the recipient for good (RCPT 5xx): a hard bounce of the address.
    BOUNCED = "bounced"
    #: The message itself was refused for good (DATA 5xx), or could not be built.
    REJECTED = "rejected"
    #: Nothing was handed over (connection, TLS, login, MAIL, or a 4xx): safe to try again.
    RETRY = "retry"
    #: The connection failed while the message was being handed over: it may have arrived.
    UNKNOWN = "unknown"
    #: Not tried: its server is down (timed out, refused the connection, 421 at the greeting).
    #: Nothing was handed over; defer it without spending an attempt.
    SERVER_DOWN = "server down"


@dataclass(frozen=True)
class Delivery:
    """The outcome of one message, with the server's reply (or the error) and its code."""

    outcome: Outcome
    response: str
    code: int | None = None

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.SENT


@dataclass(frozen=True)
class CourierConfig:
    """How hard a `Courier` may push. The defaults suit one engine process."""

    #: Conversations under way at once, over all servers.
    concurrency: int = 10
    #: Connections open at once to one SMTP server.
    per_server: int = 5
    #: Seconds for connecting (TCP, greeting, EHLO, STARTTLS, login) and for each command.
    timeout: float = TIMEOUT_SECONDS
    #: A connection is replaced after this many messages (servers limit messages per session).
    messages_per_connection: int = 100
    #: Threads running the jobs' `before`/`after` callbacks that are not coroutine functions;
    #: default `concurrency`. Each one may hold a database connection, so the caller's pool
    #: must allow this many.
    callback_threads: int | None = None

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.per_server < 1 or self.messages_per_connection < 1:
            raise ValueError(
                "concurrency, per_server and messages_per_connection must be >= 1, got "
                f"{self.concurrency}, {self.per_server}, {self.messages_per_connection}"
            )
        if not self.timeout > 0:
            raise ValueError(f"timeout must be positive, got {self.timeout}")
        if self.callback_threads is not None and self.callback_threads < 1:
            raise ValueError(f"callback_threads must be >= 1, got {self.callback_threads}")


@dataclass(frozen=True)
class SendJob:
    """One message for one server, with the caller's bookkeeping around its conversation.

    `before()` runs once a connection is ready, right before the conversation; returning
    `False` means "do not send" (paused, settled meanwhile): the message is left alone and
    `after` is not called. `after(delivery)` runs right after the conversation, or at once when
    the job was not tried (`SERVER_DOWN`, a server that cannot be used): then `before` was not
    called. A coroutine function is awaited on the courier's loop (it must not block); any
    other callable runs in a worker thread.
    """

    server: SmtpServer
    email: OutgoingEmail
    before: Callable[[], bool | None] | Callable[[], Awaitable[bool | None]] | None = None
    after: Callable[[Delivery], None] | Callable[[Delivery], Awaitable[None]] | None = None


class CallbackError(ExceptionGroup):
    """Raised by `Courier.send` after the whole batch when `before` or `after` callbacks
    raised. Each exception carries a note naming its message; `deliveries` holds the batch's
    results all the same (None where the message was not sent)."""

    deliveries: list[Delivery | None]

    def __new__(
        cls,
        message: str,
        exceptions: Sequence[Exception],
        deliveries: Sequence[Delivery | None] = (),
    ) -> CallbackError:
        self = super().__new__(cls, message, exceptions)
        self.deliveries = list(deliveries)
        return self

    def __init__(
        self,
        message: str,
        exceptions: Sequence[Exception],
        deliveries: Sequence[Delivery | None] = (),
    ) -> None:
        super().__init__(message, exceptions)

    def derive(self, excs: Sequence[Exception]) -> CallbackError:  # type: ignore[override]
        return CallbackError(self.message, excs, self.deliveries)


class Unsendable(ValueError):
    """This message cannot be handed to this server at all (its address, its headers)."""


def address_for(address: str, smtputf8: bool) -> str:
    """`address` as the server can take it: as is with SMTPUTF8, else with an IDNA domain.

    Raises `Unsendable` when the local part is not ASCII and the server has no SMTPUTF8, or
    the domain has no ASCII form.
    """
    if address.isascii() or smtputf8:
        return address
    local, at, domain = address.rpartition("@")
    if not at or not local:
        raise Unsendable(f"{address!r} is not an email address")
    if not local.isascii():
        raise Unsendable(
            f"the server does not offer SMTPUTF8, which the address {address!r} needs "
            "(its local part is not ASCII)"
        )
    try:
        ascii_domain = idna.encode(domain, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError) as exc:
        raise Unsendable(f"the domain of {address!r} has no ASCII (IDNA) form: {exc}") from None
    return f"{local}@{ascii_domain}"


@dataclass(frozen=True)
class _Envelope:
    sender: str
    recipient: str
    payload: bytes
    smtputf8: bool  # MAIL with the SMTPUTF8 option, addresses in UTF-8


def _envelope(email: OutgoingEmail, server_smtputf8: bool) -> _Envelope:
    """The envelope and serialized message for one email; raises for one that cannot go."""
    sender = address_for(email.sender_email, server_smtputf8)
    recipient = address_for(email.recipient, server_smtputf8)
    utf8 = not (sender.isascii() and recipient.isascii())
    payload = None if utf8 else plain_bytes(email, sender, recipient)
    if payload is None:
        try:
            # Long plain headers (List-Unsubscribe with its signed link) written as they are:
            # the email package would fold them into RFC 2047 encoded words, which no mailbox
            # provider reads as a List-Unsubscribe (and one-click would never work).
            raw = {
                name: value
                for name, value in email.headers.items()
                if name in _PLAIN_UNSTRUCTURED
                and _PLAIN_TEXT.fullmatch(value)
                and len(name) + 2 + len(value) <= _MAX_HEADER_LINE
            }
            if raw:
                rest = {n: v for n, v in email.headers.items() if n not in raw}
                email = replace(email, headers=rest)
            msg = email.to_message(sender, recipient)
            chosen = policy.SMTPUTF8 if utf8 else msg.policy
            head = "".join(f"{name}: {value}{chosen.linesep}" for name, value in raw.items())
            payload = head.encode("ascii") + msg.as_bytes(policy=chosen)
        except Exception as exc:  # e.g. a header that cannot be encoded; one message only
            raise Unsendable(
                f"message could not be built: {exc.__class__.__name__}: {exc}"
            ) from exc
    return _Envelope(sender, recipient, payload, utf8)


# The common message, written directly: the email package spends about a millisecond of CPU
# per message parsing back the headers it is given, as much as the whole SMTP conversation.
# `plain_bytes` writes only messages whose every part it can write exactly as the email
# package would (a property test compares the two byte for byte); anything else (non-ASCII,
# quoting, folding, HTML, transfer encodings, unusual headers) goes through the package.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = rf"{_ATEXT}(?:\.{_ATEXT})*"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_PLAIN_ADDRESS = re.compile(rf"{_DOT_ATOM}@{_LABEL}(?:\.{_LABEL})*")
_PLAIN_ID = re.compile(rf"{_DOT_ATOM}@{_DOT_ATOM}")
#: A display name that needs no quoting: words of letters and digits, single spaces.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9]+(?: [A-Za-z0-9]+)*")
#: Unstructured text that needs no encoding: printable ASCII words, single spaces, and no
#: `=?` (which a reader would take for the start of an RFC 2047 encoded word).
_PLAIN_TEXT = re.compile(r"(?!.*=\?)[!-~]+(?: [!-~]+)*")
#: Extra headers written directly: unstructured ones, and Reply-To holding one plain address.
_PLAIN_UNSTRUCTURED = frozenset({"List-Unsubscribe", "List-Unsubscribe-Post", "List-Id"})
_MAX_LINE = 78  # the email package folds longer header lines and encodes longer body lines
_MAX_HEADER_LINE = 998  # RFC 5322's limit of a line
_TEXT_PART = (
    'Content-Type: text/plain; charset="utf-8"\n'
    "Content-Transfer-Encoding: 7bit\n"
    "MIME-Version: 1.0\n"
)


@functools.lru_cache(maxsize=16)
def _date_header(date: datetime) -> str:
    """RFC 5322's Date of `date`; the messages of a batch share one (its `now`)."""
    return format_datetime(date)


def plain_bytes(email: OutgoingEmail, sender: str, recipient: str) -> bytes | None:
    """`email` serialized as `email.to_message(sender, recipient).as_bytes()` would, when it
    is a plain message (ASCII, no quoting, folding or encoding needed, text only); else None.
    """
    if (
        email.body_html
        or email.date.year < 1000
        or not (
            _PLAIN_ADDRESS.fullmatch(sender)
            and _PLAIN_ADDRESS.fullmatch(recipient)
            and _PLAIN_ID.fullmatch(email.message_id)
            and (not email.sender_name or _PLAIN_NAME.fullmatch(email.sender_name))
            and _PLAIN_TEXT.fullmatch(email.subject)
        )
    ):
        return None
    headers = [
        ("From", f"{email.sender_name} <{sender}>" if email.sender_name else sender),
        ("To", recipient),
        ("Subject", email.subject),
        ("Date", _date_header(email.date)),
        ("Message-ID", f"<{email.message_id}>"),
    ]
    for name, value in email.headers.items():
        if name in _PLAIN_UNSTRUCTURED:
            if not _PLAIN_TEXT.fullmatch(value):
                return None
        elif name != "Reply-To" or not _PLAIN_ADDRESS.fullmatch(value):
            return None
        headers.append((name, value))
    if any(len(name) + 2 + len(value) > _MAX_LINE for name, value in headers):
        return None
    if not email.body_text.isascii():
        return None
    lines = email.body_text.encode("ascii").splitlines()
    if any(len(line) > _MAX_LINE for line in lines):
        return None
    head = "".join(f"{name}: {value}\n" for name, value in headers)
    return (head + _TEXT_PART + "\n").encode("ascii") + b"\n".join(lines) + b"\n"


def _unexpected(phase: str) -> Outcome:
    """An error that is not the server's answer: in MAIL or RCPT it is this message's address
    (it would fail again); before that nothing was tried; during DATA it may have arrived."""
    if phase in ("build", "mail", "rcpt"):
        return Outcome.REJECTED
    if phase == "data":
        return Outcome.UNKNOWN
    return Outcome.RETRY


def _classify(phase: str, code: int) -> Outcome:
    if code < 500:
        return Outcome.RETRY
    if phase == "rcpt":
        return Outcome.BOUNCED
    if phase == "data":
        return Outcome.REJECTED
    # 5xx at connect, login or MAIL FROM is the sender's problem, not the recipient's:
    # retried (and reported) until the attempts run out, never a bounce.
    return Outcome.RETRY


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or "(no message)"
    return f"{exc.__class__.__name__}: {text}"


@dataclass
class _Connection:
    client: aiosmtplib.SMTP
    #: Messages started on it; it is replaced after `messages_per_connection`.
    used: int = 0
    #: A MAIL transaction may be open (MAIL was sent, DATA did not complete): RSET before reuse.
    open_transaction: bool = False


class _ServerUnusable(Exception):
    def __init__(self, delivery: Delivery) -> None:
        super().__init__(delivery.response)
        self.delivery = delivery


class _Pool:
    """One SMTP server's connections. Until one connection has succeeded, connections are
    opened one at a time, so a server that is down costs one attempt, not `per_server`."""

    def __init__(self, server: SmtpServer, per_server: int) -> None:
        self.server = server
        self.slots = asyncio.Semaphore(per_server)
        self.idle: list[_Connection] = []
        self.unusable: Delivery | None = None
        self.proven = False
        self.first_connection = asyncio.Lock()

    @property
    def name(self) -> str:
        return f"{self.server.host}:{self.server.port}"


def _stale(exc: Exception) -> bool:
    """Whether MAIL on a reused connection failed because the server had ended the idle
    session (closed it, or says 421 and closes): nothing was handed over, try a new one."""
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return exc.code == 421
    return isinstance(exc, aiosmtplib.SMTPServerDisconnected | ConnectionError)


class Courier:
    """Pooled SMTP delivery for one engine pass (a context manager; see the module docstring).

        with Courier(CourierConfig(concurrency=10)) as courier:
            courier.send(jobs_of_batch_1)   # opens connections
            courier.send(jobs_of_batch_2)   # reuses them
        # every connection got QUIT

    `send` returns one `Delivery` per job, in order, or None for a job whose `before` returned
    False or raised. Exceptions of `before`/`after` never stop the other jobs: they are raised
    together as a `CallbackError` once the whole batch is done.
    """

    def __init__(self, config: CourierConfig | None = None) -> None:
        self.config = config or CourierConfig()
        self._runner: asyncio.Runner | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._pools: dict[SmtpServer, _Pool] = {}
        self._slots: asyncio.Semaphore | None = None
        self._local_hostname: str | None = None
        self._ssl: ssl.SSLContext | None = None

    def __enter__(self) -> Courier:
        self._runner = asyncio.Runner()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """QUIT every open connection (each within the timeout) and stop the loop."""
        if self._runner is None:
            return
        try:
            self._runner.run(self._close_all())
        finally:
            self._runner.close()
            self._runner = None
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None

    @property
    def down(self) -> Mapping[SmtpServer, Delivery]:
        """Servers this courier will not try again, with what their jobs get instead."""
        return {s: p.unusable for s, p in self._pools.items() if p.unusable is not None}

    def send(self, jobs: Sequence[SendJob]) -> list[Delivery | None]:
        """Deliver one batch; see the class docstring for the results and callback errors."""
        if self._runner is None:
            raise RuntimeError("Courier.send needs the courier open: `with Courier() as c:`")
        deliveries, errors = self._runner.run(self._send(list(jobs)))
        if errors:
            raise CallbackError(
                f"{len(errors)} of {len(jobs)} job callbacks raised", errors, deliveries
            )
        return deliveries

    # The event loop side: everything below runs inside the courier's runner.

    async def _send(self, jobs: list[SendJob]) -> tuple[list[Delivery | None], list[Exception]]:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.config.concurrency)
        if self._local_hostname is None:  # aiosmtplib would look it up for every connection
            self._local_hostname = await asyncio.to_thread(socket.getfqdn)
        errors: list[Exception] = []
        tasks = [asyncio.ensure_future(self._job(job, errors)) for job in jobs]
        deliveries = await asyncio.gather(*tasks)
        return list(deliveries), errors

    async def _job(self, job: SendJob, errors: list[Exception]) -> Delivery | None:
        pool = self._pools.get(job.server)
        if pool is None:
            pool = self._pools[job.server] = _Pool(job.server, self.config.per_server)
            self._refuse_cleartext_login(pool)
        if pool.unusable is not None:
            return await self._after(job, pool.unusable, errors)
        assert self._slots is not None
        async with pool.slots, self._slots:
            if pool.unusable is not None:
                delivery = pool.unusable
            else:
                delivery = await self._in_slot(pool, job, errors)
            if delivery is None:
                return None
            # The slot is given up only once the outcome is recorded: else the next job would
            # be marked `sending` meanwhile, and a crash then could leave more messages in
            # doubt than `concurrency` (the conversations under way).
            return await self._after(job, delivery, errors)

    def _refuse_cleartext_login(self, pool: _Pool) -> None:
        """Defence in depth: senders.smtp_server_for refuses these already."""
        server = pool.server
        has_login = server.username is not None or server.password is not None
        refusal = cleartext_login_refusal(server.host, server.security, has_login)
        if refusal:
            pool.unusable = Delivery(Outcome.RETRY, f"not connecting: {refusal}")

    async def _in_slot(self, pool: _Pool, job: SendJob, errors: list[Exception]) -> Delivery | None:
        """Connection, then `before`, then the conversation; the connection goes back to the
        pool only when nothing went wrong on it."""
        try:
            connection = await self._checkout(pool)
        except _ServerUnusable as exc:
            return exc.delivery
        healthy = False  # also when cancelled halfway: then it is closed, never reused
        try:
            if job.before is not None:
                try:
                    go = await self._call(job.before)
                except Exception as exc:
                    errors.append(_noted(exc, "before", job))
                    healthy = True
                    return None
                if go is False:
                    healthy = True
                    return None
            delivery, connection, healthy = await self._converse(pool, connection, job.email)
            return delivery
        finally:
            await self._checkin(pool, connection, healthy)

    async def _after(self, job: SendJob, delivery: Delivery, errors: list[Exception]) -> Delivery:
        if job.after is not None:
            try:
                await self._call(job.after, delivery)
            except Exception as exc:
                errors.append(_noted(exc, "after", job))
        return delivery

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A callback: a coroutine function runs on the loop, any other function in a thread."""
        if inspect.iscoroutinefunction(fn):
            return await fn(*args)
        if self._executor is None:  # the first callback that needs a thread
            self._executor = ThreadPoolExecutor(
                self.config.callback_threads or self.config.concurrency,
                thread_name_prefix="courier",
            )
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    async def _checkout(self, pool: _Pool) -> _Connection:
        """An idle healthy connection of `pool`, or a new one; raises `_ServerUnusable`."""
        while pool.idle:
            connection = pool.idle.pop()
            if not connection.client.is_connected:
                continue
            if connection.open_transaction:
                try:
                    await connection.client.rset()
                except Exception:
                    await _quit(connection.client, self.config.timeout)
                    continue
                connection.open_transaction = False
            return connection
        if pool.proven:
            return await self._connect(pool)
        async with pool.first_connection:
            if pool.unusable is not None:
                raise _ServerUnusable(pool.unusable)
            connection = await self._connect(pool)
            pool.proven = True
            return connection

    async def _connect(self, pool: _Pool) -> _Connection:
        server, timeout = pool.server, self.config.timeout
        client = aiosmtplib.SMTP(
            hostname=server.host,
            port=server.port,
            use_tls=server.security == "tls",
            start_tls=server.security == "starttls",
            username=server.username,
            password=server.password,
            timeout=timeout,
            tls_context=self._tls_context() if server.security != "none" else None,
            local_hostname=self._local_hostname,
        )
        try:
            # Each step has the timeout; the whole of it too, so a server that answers every
            # step slowly costs one timeout, not one per step.
            async with asyncio.timeout(timeout):
                await client.connect()
                if client.is_ehlo_or_helo_needed:
                    try:
                        await client.ehlo()
                    except aiosmtplib.SMTPHeloError:
                        await client.helo()
        except Exception as exc:
            client.close()
            pool.unusable = self._unusable(pool, exc)
            await self._close_idle(pool)
            raise _ServerUnusable(pool.unusable) from exc
        return _Connection(client)

    def _tls_context(self) -> ssl.SSLContext:
        """One verifying context for the courier: loading the CA store takes milliseconds."""
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    def _unusable(self, pool: _Pool, exc: Exception) -> Delivery:
        """What a failed connection attempt means for the server's other jobs."""
        if isinstance(exc, aiosmtplib.SMTPResponseException):
            if exc.code == 421:  # "service not available": the server said it is down
                return Delivery(
                    Outcome.SERVER_DOWN, f"{pool.name} is unavailable: {exc.message}", exc.code
                )
            return Delivery(Outcome.RETRY, f"cannot use {pool.name}: {exc.message}", exc.code)
        if isinstance(exc, ssl.SSLError | aiosmtplib.SMTPNotSupported):
            return Delivery(Outcome.RETRY, f"cannot use {pool.name}: {_describe(exc)}")
        if isinstance(exc, TimeoutError):
            return Delivery(
                Outcome.SERVER_DOWN,
                f"{pool.name} is down: timed out connecting (no answer within "
                f"{self.config.timeout:g} s)",
            )
        if isinstance(exc, OSError | aiosmtplib.SMTPException):
            return Delivery(Outcome.SERVER_DOWN, f"{pool.name} is down: {_describe(exc)}")
        return Delivery(Outcome.RETRY, f"cannot use {pool.name}: {_describe(exc)}")

    async def _converse(
        self, pool: _Pool, connection: _Connection, email: OutgoingEmail
    ) -> tuple[Delivery, _Connection, bool]:
        """Hand one message over in explicit phases, so a failure says what it means:
        before DATA nothing was delivered (retry); a refused RCPT is the address (bounce); a
        refused DATA is the message; a connection lost during DATA leaves it in doubt. A
        message that cannot be written for this server (its address, its headers) is rejected
        alone. Returns the delivery, the connection now in use, and whether it may be reused.

        A reused connection the server closed while it was idle fails at MAIL: then one new
        connection is opened and the message tried on it (nothing was handed over)."""
        reused = connection.used > 0
        phase = "build"
        try:
            while True:
                phase = "build"
                client = connection.client
                envelope = _envelope(email, client.supports_extension("smtputf8"))
                encoding = "utf-8" if envelope.smtputf8 else "ascii"
                phase = "mail"
                connection.used += 1
                connection.open_transaction = True
                try:
                    await client.mail(
                        envelope.sender,
                        options=["SMTPUTF8"] if envelope.smtputf8 else [],
                        encoding=encoding,
                    )
                except Exception as exc:
                    if not (reused and _stale(exc)):
                        raise
                    client.close()
                    reused = False
                    try:
                        connection = await self._connect(pool)
                    except _ServerUnusable as exc:
                        return exc.delivery, connection, False
                    continue
                break
            phase = "rcpt"
            await client.rcpt(envelope.recipient, encoding=encoding)
            phase = "data"
            response = await client.data(envelope.payload)
            connection.open_transaction = False
            return Delivery(Outcome.SENT, str(response.message), response.code), connection, True
        except Unsendable as exc:  # nothing went over the wire: the connection is fine
            return Delivery(Outcome.REJECTED, str(exc)), connection, True
        except aiosmtplib.SMTPResponseException as exc:
            return Delivery(_classify(phase, exc.code), exc.message, exc.code), connection, False
        except TimeoutError as exc:
            # Not answering within the timeout: the server is down for the rest of the pass.
            pool.unusable = Delivery(
                Outcome.SERVER_DOWN,
                f"{pool.name} is down: timed out during {phase.upper()} (no answer within "
                f"{self.config.timeout:g} s)",
            )
            outcome = Outcome.UNKNOWN if phase == "data" else Outcome.RETRY
            return Delivery(outcome, _describe(exc)), connection, False
        except (aiosmtplib.SMTPException, OSError) as exc:
            outcome = Outcome.UNKNOWN if phase == "data" else Outcome.RETRY
            return Delivery(outcome, _describe(exc)), connection, False
        except Exception as exc:  # anything else ends this message only
            return Delivery(_unexpected(phase), _describe(exc)), connection, False

    async def _checkin(self, pool: _Pool, connection: _Connection, healthy: bool) -> None:
        if (
            healthy
            and pool.unusable is None
            and connection.client.is_connected
            and connection.used < self.config.messages_per_connection
        ):
            pool.idle.append(connection)
        elif pool.unusable is not None and pool.unusable.outcome is Outcome.SERVER_DOWN:
            connection.client.close()  # no QUIT to wait for
        else:
            await _quit(connection.client, self.config.timeout)

    async def _close_idle(self, pool: _Pool) -> None:
        """QUIT the idle connections; a server that is down gets no QUIT to wait for."""
        idle, pool.idle = pool.idle, []
        if pool.unusable is not None and pool.unusable.outcome is Outcome.SERVER_DOWN:
            for connection in idle:
                connection.client.close()
            return
        await asyncio.gather(*(_quit(c.client, self.config.timeout) for c in idle))

    async def _close_all(self) -> None:
        await asyncio.gather(*(self._close_idle(pool) for pool in self._pools.values()))


async def _quit(client: aiosmtplib.SMTP, timeout: float) -> None:
    """QUIT within the timeout; close regardless (closing is all that is left to do)."""
    if client.is_connected:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.quit(), timeout)
    client.close()


def _noted(exc: Exception, callback: str, job: SendJob) -> Exception:
    exc.add_note(f"in the {callback} callback of message <{job.email.message_id}>")
    return exc


def deliver(
    server: SmtpServer, emails: Sequence[OutgoingEmail], config: CourierConfig | None = None
) -> list[Delivery]:
    """Send `emails` to `server` with a courier of its own; one Delivery per email, in order.

    One connection at a time by default, so the messages go in order over one session."""
    config = config or CourierConfig(concurrency=1, per_server=1)
    with Courier(config) as courier:
        deliveries = courier.send([SendJob(server, email) for email in emails])
    return [d for d in deliveries if d is not None]
