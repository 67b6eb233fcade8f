"""The tracking server: opens, clicks, unsubscribes (Starlette, served by uvicorn).

| request | answer | records |
|---|---|---|
| `GET /o/TOKEN` | a 1x1 transparent GIF, never cached | an `open` |
| `GET /c/TOKEN` | 302 to the link's original URL (from the token) | a `click` |
| `GET /u/TOKEN` | a page whose button confirms (a POST) | nothing: mail scanners follow links |
| `POST /u/TOKEN` | the confirmation page (RFC 8058 one-click, or the button) | an `unsubscribe` |
| `GET /health` | `{"status": "ok", ...}` and the writer's counts | |

A request line and headers over 32 KiB get 431; a request has seconds to arrive whole and an
idle connection seconds to send the next; connections are capped (`engine.tracking.limits`).

HEAD is answered like GET, and an open or click made by HEAD is flagged `machine`
(`engine.tracking.machine`). A token none of this server's keys signed (forged, altered, cut, of
another kind) gets 404 and records nothing; links signed with a previous key
(`PENGUIN_SECRET_KEY_PREVIOUS`) still verify. Replaying any request is harmless: the same
request within a second has the same dedup key, and an unsubscribe is one per message.

Events go through `engine.tracking.events.EventWriter` (batched, drained on shutdown); an
unsubscribe answers only once committed. The server connects as `penguin_app` and acts, per
event, for the tenant its signed token names.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import html
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy.engine import Engine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse
from starlette.responses import Response as StarletteResponse
from starlette.routing import Route

from engine.tracking.events import Config, Event, EventWriter, WriterUnavailable
from engine.tracking.machine import machine_reason
from engine.tracking.tokens import Kind, Token, Tokens

if TYPE_CHECKING:
    from engine.config import Settings

log = logging.getLogger(__name__)

#: Longest an unsubscribe request waits for its commit before it answers "try again".
UNSUBSCRIBE_WAIT = 10.0

PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
_NO_STORE = {"Cache-Control": "no-store, no-cache, must-revalidate, max-age=0"}
#: Answers to what carries no valid token; the same for every kind of mistake.
_NOT_FOUND = PlainTextResponse("not found\n", status_code=404)

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<meta name="robots" content="noindex"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem}}
button{{font-size:1rem;padding:.6rem 1.2rem}}</style></head>
<body><h1>{title}</h1>{body}</body></html>
"""


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(
        _PAGE.format(title=html.escape(title), body=body), status_code=status, headers=_NO_STORE
    )


def create_app(
    app_engine: Engine,
    tokens: Tokens,
    *,
    config: Config | None = None,
    clock: Callable[[], datetime] | None = None,
) -> Starlette:
    """The server's application; `clock` (default: the wall clock) times the events."""
    writer = EventWriter(app_engine, config)
    now = clock or (lambda: datetime.now(UTC))

    def verified(request: Request, kind: Kind) -> Token | None:
        return tokens.read(kind, request.path_params["token"])

    def event(request: Request, token: Token, at: datetime) -> Event:
        agent = request.headers.get("user-agent", "")
        ip = request.client.host if request.client else ""
        payload: dict[str, object] = {"user_agent": agent[:512], "ip": ip}
        if request.method != "GET":
            payload["method"] = request.method
        if token.kind is Kind.CLICK:
            payload |= {
                "url": token.url,
                "part": None if token.part is None else int(token.part),
                "link": token.link,
                "links": token.links,
            }
        if token.kind is Kind.UNSUBSCRIBE:
            dedup = f"unsubscribe:{token.message_id}"
            reason = None
        else:
            who = hashlib.sha256(f"{request.method}|{agent}|{ip}".encode()).hexdigest()[:16]
            link = "" if token.link is None else f"{token.part}.{token.link}"
            dedup = f"{token.kind}:{token.message_id}:{link}:{int(at.timestamp())}:{who}"
            reason = machine_reason(request.method, agent)
        return Event(
            event_type=str(token.kind),
            tenant_id=token.tenant_id,
            message_id=token.message_id,
            occurred_at=at,
            dedup_key=dedup,
            payload=payload,
            machine_reason=reason,
        )

    async def record(request: Request, token: Token, *, wait: float | None = None) -> None:
        await writer.add(event(request, token, now()), wait=wait)

    async def record_quietly(request: Request, token: Token) -> None:
        """An open's or click's event: its answer goes out whatever became of it."""
        with contextlib.suppress(TimeoutError, WriterUnavailable):  # counted and logged there
            await record(request, token)

    async def open_pixel(request: Request) -> StarletteResponse:
        token = verified(request, Kind.OPEN)
        if token is None:
            return _NOT_FOUND
        await record_quietly(request, token)
        return StarletteResponse(PIXEL, media_type="image/gif", headers=_NO_STORE)

    async def click(request: Request) -> StarletteResponse:
        token = verified(request, Kind.CLICK)
        if token is None or not token.url:
            return _NOT_FOUND
        await record_quietly(request, token)
        return RedirectResponse(token.url, status_code=302, headers=_NO_STORE)

    async def unsubscribe_page(request: Request) -> StarletteResponse:
        if verified(request, Kind.UNSUBSCRIBE) is None:
            return _NOT_FOUND
        form = (
            '<p>Stop receiving these emails?</p><form method="post">'
            '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
            '<button type="submit">Unsubscribe</button></form>'
        )
        return _page("Unsubscribe", form)

    async def unsubscribe(request: Request) -> StarletteResponse:
        token = verified(request, Kind.UNSUBSCRIBE)
        if token is None:
            return _NOT_FOUND
        try:
            await record(request, token, wait=UNSUBSCRIBE_WAIT)
        except TimeoutError:
            return _page(
                "Please try again in a minute",
                "<p>Your request is taking longer than it should. It will most likely be "
                "recorded; if it is not, press the button again in a minute.</p>",
                status=503,
            )
        except Exception:
            log.exception("unsubscribe of message %s not recorded", token.message_id)
            return _page(
                "Something went wrong",
                "<p>Your request could not be recorded. Please try again later.</p>",
                status=503,
            )
        return _page("You are unsubscribed", "<p>You will not receive these emails again.</p>")

    async def health(request: Request) -> StarletteResponse:
        if writer.stopped is not None:
            status = "event writer stopped"
        elif writer.failing_since is not None:
            status = "database unavailable: events waiting"
        else:
            status = "ok"
        return JSONResponse(
            {
                "status": status,
                "pending": writer.pending,
                "written": writer.written,
                "dropped": writer.dropped,
            },
            status_code=200 if writer.healthy else 503,
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await writer.start()
        try:
            yield
        finally:
            await writer.close()

    app = Starlette(
        routes=[
            Route("/o/{token}", open_pixel, methods=["GET", "HEAD"]),
            Route("/c/{token}", click, methods=["GET", "HEAD"]),
            Route("/u/{token}", unsubscribe_page, methods=["GET", "HEAD"]),
            Route("/u/{token}", unsubscribe, methods=["POST"]),
            Route("/health", health, methods=["GET", "HEAD"]),
        ],
        lifespan=lifespan,
    )
    app.state.writer = writer
    return app


def serve(settings: Settings, host: str = "127.0.0.1", port: int | None = None) -> None:
    """Run the server until SIGINT or SIGTERM; the events still queued are written before it
    exits. Behind a reverse proxy on the same host, the client address comes from its
    X-Forwarded-For. Links verify with the current key and the previous ones
    (`engine.tracking.tokens.tokens_for`); the limits are `engine.tracking.limits`'."""
    import uvicorn

    from engine.db import Database
    from engine.tracking.limits import uvicorn_config
    from engine.tracking.tokens import tokens_for

    tokens = tokens_for(settings)
    db = Database(settings)
    try:
        config = uvicorn_config(
            create_app(db.app, tokens),
            host,
            port or settings.tracking_port,
            log_level="warning",
            access_log=False,
            proxy_headers=True,
            server_header=False,
        )
        uvicorn.Server(config).run()
    finally:
        db.dispose()


if __name__ == "__main__":  # `penguin up`'s child: everything from its environment
    import sys

    from engine.config import Settings
    from engine.tracking.tokens import SecretKeyError

    try:
        serve(Settings.from_env())
    except SecretKeyError as exc:  # said in its log, which `penguin up` shows
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
