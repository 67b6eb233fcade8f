"""track: 20,000 open and click requests at 64 concurrent clients against the tracking server,
beside the same load on a bare Starlette endpoint that returns the same responses without
recording, in the same run. Target: >= 0.5 of the bare throughput, with every event in the
database afterwards.

Setup, before the clock starts: an embedded PostgreSQL (pgserver) in a temporary PENGUIN_HOME,
migrated; a tenant whose campaign has sent `--messages` messages (10,000: rows written as the
engine leaves them, sent a day ago); for each message one open link and one click link, signed
as the engine signs them.

Tracking: the project's server as `penguin up` runs it (`python -m engine.tracking.server`, its
own process, the environment `penguin up` gives it). Timed from the first request until every
response has come back AND every event is committed (the server's /health reports nothing
pending): the figure is requests per second to the visible result. Then the events are
counted: the run fails unless there is one per request.

Baseline: a Starlette app in the same uvicorn settings and limits
(`engine.tracking.limits.uvicorn_config`), in its own process, answering the same
paths with the same responses (the GIF, a 302 with the same headers), verifying and recording
nothing.

Load: 64 keep-alive HTTP/1.1 connections from this process (asyncio streams, one request at a
time on each), the requests shuffled once and sent in the same order to both servers.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402
from bench_send import free_port, log, set_up  # noqa: E402

from engine import migrate  # noqa: E402
from engine.config import Settings  # noqa: E402
from engine.db import Database, tenant_transaction  # noqa: E402
from engine.embedded import start_embedded_postgres  # noqa: E402

AGENT = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0) AppleWebKit/605.1.15 (KHTML, like Gecko)"

#: The bare server: the same responses as engine.tracking.server, nothing verified or recorded.
BARE_CHILD = """
import sys
import uvicorn
from starlette.applications import Starlette
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from engine.tracking.limits import uvicorn_config
from engine.tracking.server import PIXEL, _NO_STORE

async def pixel(request):
    return Response(PIXEL, media_type="image/gif", headers=_NO_STORE)

async def click(request):
    return RedirectResponse("https://bench.example/landing", status_code=302, headers=_NO_STORE)

app = Starlette(routes=[Route("/o/{token}", pixel), Route("/c/{token}", click)])
uvicorn.Server(uvicorn_config(app, "127.0.0.1", int(sys.argv[1]), log_level="warning",
                              access_log=False, server_header=False)).run()
"""

_MESSAGES = sa.text(
    """
    insert into app.sent_emails
        (tenant_id, campaign_contact_id, campaign_id, step_id, contact_id, recipient_email,
         subject, message_id, status, attempts, queued_at, sent_at, updated_at)
    select cc.tenant_id, cc.id, cc.campaign_id, cc.current_step_id, cc.contact_id, ct.email,
           'bench', 'bench-' || cc.id || '@bench.example', 'sent', 1, :sent, :sent, :sent
    from app.campaign_contacts cc join app.contacts ct on ct.id = cc.contact_id
    returning id
    """
)
_EVENTS = sa.text("select event_type, count(*) from app.email_events group by event_type")


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server for {url} exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError as exc:
            if getattr(exc, "code", None) == 404:
                return  # it answers
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer within {timeout:.0f} s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


async def _client(port: int, paths: list[str], statuses: dict[int, int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for path in paths:
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: {AGENT}\r\n\r\n".encode()
            )
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length:
                await reader.readexactly(length)
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        writer.close()


def load(port: int, paths: list[str], clients: int) -> dict[int, int]:
    """Every path requested once over `clients` keep-alive connections; the statuses."""
    statuses: dict[int, int] = {}
    shares = [paths[i::clients] for i in range(clients)]

    async def main() -> None:
        await asyncio.gather(*(_client(port, share, statuses) for share in shares))

    asyncio.run(main())
    return statuses


def health(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as response:
        return json.load(response)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000, help="messages (2 requests each)")
    parser.add_argument("--clients", type=int, default=64)
    args = parser.parse_args()
    os.environ["DO_NOT_TRACK"] = "1"
    with tempfile.TemporaryDirectory(prefix="bench-track-") as tmp:
        work = Path(tmp)
        settings = Settings(home=work / "home", database_url=None)
        os.environ["PENGUIN_HOME"] = str(settings.home)
        owner_url = start_embedded_postgres(settings)
        db = Database(settings, owner_url)
        migrate.upgrade(db)
        now = datetime.now(UTC)
        log(f"setting up {args.messages:,} sent messages")
        tenant_id = set_up(db, work, args.messages, now)
        with tenant_transaction(db.app, tenant_id) as conn:
            ids = conn.execute(_MESSAGES, {"sent": now - timedelta(days=1)}).scalars().all()

        from engine.runtime import child_environment
        from engine.tracking.links import tracking_for
        from engine.tracking.tokens import Kind

        port, bare_port = free_port(), free_port()
        settings = dataclasses.replace(settings, tracking_port=port)
        db_for_children = Database(settings, owner_url)
        tracking = tracking_for(settings)

        paths = []
        for i, message in enumerate(ids):
            paths.append(urlsplit(tracking.url(Kind.OPEN, tenant_id, message)).path)
            url = f"https://bench.example/landing?m={i}"
            click = tracking.url(Kind.CLICK, tenant_id, message, link=0, links=1, url=url)
            paths.append(urlsplit(click).path)
        random.Random(7).shuffle(paths)

        bare = subprocess.Popen(
            [sys.executable, "-c", BARE_CHILD, str(bare_port)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        try:
            wait_http(f"http://127.0.0.1:{bare_port}/o/x", bare)
            start = time.perf_counter()
            bare_statuses = load(bare_port, paths, args.clients)
            bare_s = time.perf_counter() - start
        finally:
            stop(bare)
        log(f"bare: {bare_statuses} in {bare_s:.2f} s")

        env = child_environment("tracking", db_for_children)
        server = subprocess.Popen(
            [
                sys.executable,
                *os.environ.get("BENCH_TRACK_SERVER", "-m engine.tracking.server").split(),
            ],
            cwd=ROOT,
            env={**env, "PYTHONPATH": str(ROOT)},
        )
        try:
            wait_http(f"http://127.0.0.1:{port}/health", server)
            start = time.perf_counter()
            statuses = load(port, paths, args.clients)
            answered_s = time.perf_counter() - start
            while health(port)["pending"]:
                time.sleep(0.01)
            tracked_s = time.perf_counter() - start
            counts = health(port)
        finally:
            stop(server)
        log(f"tracking: {statuses} answered in {answered_s:.2f} s, committed in {tracked_s:.2f} s")
        log(f"tracking server counts: {counts}")
        with tenant_transaction(db.app, tenant_id) as conn:
            events = {t: n for t, n in conn.execute(_EVENTS)}
        log(f"events in the database: {events}")
        expected = {"open": len(ids), "click": len(ids)}
        if statuses != {200: len(ids), 302: len(ids)} or events != expected:
            print(f"# FAILED: expected {expected} events and every request answered", flush=True)
            return 1
        rps, bare_rps = len(paths) / tracked_s, len(paths) / bare_s
        print(
            f"BENCH track requests_per_s={rps:.0f} baseline_requests_per_s={bare_rps:.0f} "
            f"ratio={rps / bare_rps:.2f} requests={len(paths)} clients={args.clients} "
            f"answered_s={answered_s:.2f} committed_s={tracked_s:.2f} bare_s={bare_s:.2f}",
            flush=True,
        )
        db_for_children.dispose()
        db.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
