"""What one client may cost the tracking server: how big a request's head, how long a request
or an idle connection, how many connections at once.

The server faces the whole internet (every recipient's mail client, and anyone who reads a
link), so no client may hold memory, time or connections the others need:

* a request line and headers longer than `MAX_REQUEST_HEAD` bytes get **431** and the
  connection is closed, before the parser has buffered more than that (a 40 MB `User-Agent`
  once blocked the event loop for seconds and kept 100 MB);
* a request must arrive whole (line, headers, body) within `REQUEST_TIMEOUT` seconds of its
  first byte, or of the connection's opening: a client that sends half a request, or nothing,
  is disconnected (300 half-sent requests once stayed open for minutes);
* a keep-alive connection idle for `IDLE_TIMEOUT` seconds after a response is closed;
* beyond `MAX_CONNECTIONS` open connections, requests are answered 503 at once (uvicorn's
  `limit_concurrency`), so the process stays within its file descriptors and memory.

uvicorn 0.55 (installed) offers `timeout_keep_alive` and `limit_concurrency`; its size limit
(`h11_max_incomplete_event_size`) applies to the h11 parser only and answers 400, and none of
its parsers bounds the time a request's head may take. So the server runs uvicorn's httptools
protocol (the fast parser it picks itself when httptools is installed) with the two missing
limits added here (`BoundedHttpToolsProtocol`); the rest is uvicorn's own settings
(`uvicorn_config`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

#: Bytes of a request line and headers. A click link carries its target URL in its token
#: (base64, a third longer), so twice h11's and nginx's usual 8-16 KiB; no mail client's request
#: for one of our links comes near it.
MAX_REQUEST_HEAD = 32 * 1024
#: Seconds a request has to arrive whole once it has started (or once its connection opened).
#: Our requests are a few hundred bytes: a person's mail client sends one in one packet.
REQUEST_TIMEOUT = 5.0
#: Seconds a keep-alive connection may wait for its next request (uvicorn's default, named).
IDLE_TIMEOUT = 5
#: Connections open at once before requests get 503: below the usual limit of 1,024 file
#: descriptors a process may open, leaving room for the database pool, logs and the listener.
MAX_CONNECTIONS = 512

_TOO_LARGE = b"request line and headers too large\n"
_TOO_LARGE_RESPONSE = b"".join(
    [
        b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
        b"content-type: text/plain; charset=utf-8\r\n",
        b"content-length: %d\r\n" % len(_TOO_LARGE),
        b"connection: close\r\n\r\n",
        _TOO_LARGE,
    ]
)


@dataclass(frozen=True)
class Limits:
    """The limits of one server (the module's constants unless a test shortens them)."""

    max_request_head: int = MAX_REQUEST_HEAD
    request_timeout: float = REQUEST_TIMEOUT
    idle_timeout: float = IDLE_TIMEOUT
    max_connections: int = MAX_CONNECTIONS


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bound on a request's head and on its arrival time.

    What holds: the parser is never fed more than `max_request_head` bytes of one request's
    head (a chunk that would pass the bound is fed up to it, and the rest only if the head
    ended there); from a connection's opening, and from the first byte of each later request,
    the request has `request_timeout` seconds to arrive whole, else the connection closes.
    Between requests uvicorn's keep-alive timer applies. The hot path pays one comparison per
    chunk and one timer per request.
    """

    limits: Limits = Limits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # bytes now arriving belong to a request's line and headers
        self._head_bytes = 0
        self._heads = 0  # heads completed on this connection
        self._arrival: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._in_head:
            super().data_received(data)
            return
        self._arm()
        allowance = self.limits.max_request_head - self._head_bytes
        if len(data) <= allowance:
            self._head_bytes += len(data)
            super().data_received(data)
            return
        heads = self._heads
        super().data_received(data[:allowance])
        if self.transport.is_closing():
            return
        if self._heads == heads:  # the head did not end within the bound
            self._refuse_too_large()
            return
        self.data_received(data[allowance:])  # its body, or the next request

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._heads += 1
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        self._in_head, self._head_bytes = True, 0
        super().on_message_complete()

    def _arm(self) -> None:
        if self._arrival is None:
            self._arrival = self.loop.call_later(self.limits.request_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._arrival is not None:
            self._arrival.cancel()
            self._arrival = None

    def _too_slow(self) -> None:
        self._arrival = None
        if not self.transport.is_closing():
            self.transport.close()

    def _refuse_too_large(self) -> None:
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(_TOO_LARGE_RESPONSE)
        self.transport.close()


def uvicorn_config(
    app: Any, host: str, port: int, limits: Limits | None = None, **settings: Any
) -> uvicorn.Config:
    """The tracking server's uvicorn settings: `limits` (default: the module's constants) and
    no WebSocket (it serves none); `settings` adds uvicorn's others (logging, proxy headers)."""
    limits = limits or Limits()
    protocol = type("BoundedHttpToolsProtocol", (BoundedHttpToolsProtocol,), {"limits": limits})
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol,
        ws="none",
        timeout_keep_alive=limits.idle_timeout,  # type: ignore[arg-type]
        limit_concurrency=limits.max_connections,
        **settings,
    )
