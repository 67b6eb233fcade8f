"""A real SMTP server (aiosmtpd) that misbehaves on demand, chosen per recipient.

One server answers every fault the engine must classify, so a single batch can hold a
message of each kind. The recipient's local part picks what happens to its message:

    r421-...             RCPT: "421 4.3.2 Service busy" (the client closes the session; retry)
    r451-...             RCPT: "451 4.7.1 Greylisted, try again later" (retry)
    r550-...             RCPT: "550 5.1.1 No such user" (hard bounce)
    d554-...             DATA: "554 5.7.1 Message refused" (rejected)
    drop-after-data-...  the message is read up to its final dot, kept, then the connection is
                         cut without an answer (outcome unknown; it did arrive)
    hang-...             RCPT is never answered (a server that stops answering mid-way)
    anything else        accepted: "250 OK"

Whole-server behaviour, chosen when the server starts:

    smtp_faults.start(tarpit=True)   accepts TCP connections and never says a word (no
                                     greeting): the classic tarpit
    smtp_faults.refused()            an address where nothing listens (connection refused)
    smtp_faults.start(data_delay=s)  every DATA takes `s` seconds (to see concurrency)
    smtp_faults.start(smtputf8=False)

What a test can read: `server.arrivals` (each with the number of the connection it came
over), `server.connections` (opened so far), `server.max_open` (most open at once),
`server.quits`, `server.rsets`; `server.hang_up()` closes every open connection from the
server's side, as an idle timeout does; across every server of the fixture,
`smtp_faults.max_in_data` (most DATA commands under way at once).

Use it from any test through the `smtp_faults` fixture (imported into tests/conftest.py):

    def test_...(smtp_faults):
        server = smtp_faults.start()
        deliver(server.smtp, [email_to("r550-ann@example.com")])
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

from engine.senders import SmtpServer

#: The reply each prefix gets at RCPT.
RCPT_REPLIES = {
    "r421-": "421 4.3.2 Service busy, closing",
    "r451-": "451 4.7.1 Greylisted, try again later",
    "r550-": "550 5.1.1 No such user",
}
DATA_REFUSAL = "554 5.7.1 Message refused"


def _local_part(address: str) -> str:
    return address.rpartition("@")[0].lower()


@dataclass(frozen=True)
class Arrival:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    connection: int  # 1 for the server's first connection, 2 for the next, ...


@dataclass
class Gauge:
    """A count of things under way, with its high-water mark; shared across server threads."""

    now: int = 0
    most: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def up(self) -> None:
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)

    def down(self) -> None:
        with self._lock:
            self.now -= 1


class FaultHandler:
    """aiosmtpd handler hooks: the per-recipient faults of the module docstring."""

    def __init__(self, in_data: Gauge, data_delay: float) -> None:
        self.arrivals: list[Arrival] = []
        self.quits = 0
        self.rsets = 0
        self.in_data = in_data
        self.data_delay = data_delay

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
        local = _local_part(address)
        if local.startswith("hang-"):
            await asyncio.Event().wait()  # until the client gives up and the session ends
        for prefix, reply in RCPT_REPLIES.items():
            if local.startswith(prefix):
                return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        self.in_data.up()
        try:
            if self.data_delay:
                await asyncio.sleep(self.data_delay)
            locals_ = [_local_part(r) for r in envelope.rcpt_tos]
            if any(local.startswith("d554-") for local in locals_):
                return DATA_REFUSAL
            self.arrivals.append(
                Arrival(
                    envelope.mail_from,
                    list(envelope.rcpt_tos),
                    envelope.original_content,
                    session.connection_number,
                )
            )
            if any(local.startswith("drop-after-data-") for local in locals_):
                server.transport.abort()  # no reply: the client cannot know it arrived
                await asyncio.sleep(3600)  # cancelled as the connection goes
            return "250 OK"
        finally:
            self.in_data.down()

    async def handle_RSET(self, server, session, envelope):  # noqa: N802
        self.rsets += 1
        return "250 OK"

    async def handle_QUIT(self, server, session, envelope):  # noqa: N802
        self.quits += 1
        return "221 Bye"


class _CountingSMTP(SMTP):
    """Numbers each connection and keeps count of those open (a real server would too)."""

    def __init__(self, handler: FaultHandler, fault: FaultServer, **kwargs) -> None:
        super().__init__(handler, **kwargs)
        self._fault = fault

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # aiosmtpd's own check that the server is up is not counted.
        self._counted = self._fault.counting
        self.session.connection_number = self._fault._opened() if self._counted else 0
        if self._counted:
            self._fault.sessions.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        if self._counted:
            self._fault.sessions.discard(self)
            self._fault.open.down()
        super().connection_lost(error)


class _Controller(Controller):
    def __init__(self, fault: FaultServer, handler: FaultHandler, **kwargs) -> None:
        super().__init__(handler, **kwargs)
        self._fault = fault

    def factory(self) -> SMTP:
        return _CountingSMTP(self.handler, self._fault, **self.SMTP_kwargs)

    def _trigger_server(self) -> None:
        self.port = self.server.sockets[0].getsockname()[1]  # bound to port 0: the real one
        super()._trigger_server()


class FaultServer:
    """One running server: an aiosmtpd server with `FaultHandler`, or a tarpit."""

    def __init__(self, in_data: Gauge, *, tarpit: bool, data_delay: float, smtputf8: bool):
        self.handler = FaultHandler(in_data, data_delay)
        self.open = Gauge()
        self.connections = 0
        self.counting = False
        self.sessions: set[SMTP] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._held: list[socket.socket] = []
        if tarpit:
            self._listener = socket.create_server(("127.0.0.1", 0), backlog=64)
            self._listener.settimeout(0.05)
            self.port = self._listener.getsockname()[1]
            self._thread = threading.Thread(target=self._hold_connections, daemon=True)
            self._thread.start()
            self._controller: Controller | None = None
        else:
            self._controller = _Controller(
                self, self.handler, hostname="127.0.0.1", port=0, enable_SMTPUTF8=smtputf8
            )
            self._controller.start()
            self.port = self._controller.port
        self.counting = True

    @property
    def smtp(self) -> SmtpServer:
        return SmtpServer("127.0.0.1", self.port)

    @property
    def arrivals(self) -> list[Arrival]:
        return self.handler.arrivals

    @property
    def quits(self) -> int:
        return self.handler.quits

    @property
    def rsets(self) -> int:
        return self.handler.rsets

    @property
    def max_open(self) -> int:
        return self.open.most

    def recipients(self) -> list[str]:
        return sorted(r for a in self.arrivals for r in a.rcpt_tos)

    def hang_up(self) -> None:
        """Close every open connection from the server's side (as an idle timeout does)."""
        assert self._controller is not None, "a tarpit has no sessions to hang up"
        for session in list(self.sessions):
            self._controller.loop.call_soon_threadsafe(session.transport.close)
        deadline = time.monotonic() + 5
        while self.open.now and time.monotonic() < deadline:
            time.sleep(0.01)

    def _opened(self) -> int:
        self.open.up()
        with self._lock:
            self.connections += 1
            return self.connections

    def _hold_connections(self) -> None:
        """The tarpit: accept, count, and never answer."""
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._held.append(conn)
            self._opened()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            return
        self._stopping.set()
        self._thread.join(5)
        self._listener.close()
        for conn in self._held:
            conn.close()


class FaultServers:
    """The fixture's value: starts servers on free ports, stops them all at teardown."""

    def __init__(self) -> None:
        self.in_data = Gauge()
        self._servers: list[FaultServer] = []

    def start(
        self, *, tarpit: bool = False, data_delay: float = 0.0, smtputf8: bool = True
    ) -> FaultServer:
        server = FaultServer(self.in_data, tarpit=tarpit, data_delay=data_delay, smtputf8=smtputf8)
        self._servers.append(server)
        return server

    @staticmethod
    def refused() -> SmtpServer:
        """An address where nothing listens: every connection is refused."""
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return SmtpServer("127.0.0.1", sock.getsockname()[1])

    @property
    def max_in_data(self) -> int:
        return self.in_data.most

    def stop(self) -> None:
        for server in self._servers:
            server.stop()


@pytest.fixture
def smtp_faults() -> Iterator[FaultServers]:
    """Real SMTP servers with faults per recipient (see tests/smtp_faults.py)."""
    servers = FaultServers()
    yield servers
    servers.stop()
