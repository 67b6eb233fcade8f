"""Which opens and clicks a machine made, in one place.

Mail privacy proxies fetch every image of a message when it arrives, security scanners follow
every link before the recipient sees it, and link checkers send HEAD requests. Their events are
kept (they say the message arrived) but flagged `machine`; every human count excludes them.

An event is a machine's when:

* **HEAD**: it was a HEAD request (a person's client asks for the image or the page itself);
* **proxy or scanner**: its User-Agent is one of `MACHINE_AGENTS`: Apple Mail Privacy
  Protection (its fetches carry the bare ``Mozilla/5.0``), Google's and Yahoo's image proxies,
  the mail security gateways, link scanners and HTTP libraries that say who they are;
* **too soon**: an open within `OPEN_TOO_SOON` of the message being sent (nobody reads that
  fast; proxies and gateways fetch on arrival);
* **every link at once**: clicks on every link of a message with two or more links, all within
  `ALL_LINKS_WINDOW`: a scanner following each link, not a reader choosing one. (Flagged when the
  last of them arrives: the earlier ones are flagged then too.)
"""

from __future__ import annotations

import functools
import re
from datetime import timedelta

#: User agents of mail privacy proxies, security gateways and link scanners, as regular
#: expressions matched anywhere in the header, ignoring case; and Apple's proxy, whose whole
#: header is exactly ``Mozilla/5.0``.
MACHINE_AGENTS = (
    r"GoogleImageProxy",
    r"YahooMailProxy",
    r"\b(Barracuda|Mimecast|Proofpoint|Symantec|MessageLabs|Forcepoint|Trend ?Micro|"
    r"Sophos|Fortinet|FortiGuard|Cisco|IronPort|SafeLinks|Microsoft Defender|Zscaler)\b",
    r"\b(bot|crawler|spider|scanner|preview|prefetch|headless)\b",
    r"^(python-requests|python-urllib|curl|wget|Go-http-client|Java|okhttp|libwww-perl|"
    r"aiohttp|httpx|axios|node-fetch)\b",
)
APPLE_PROXY_AGENT = "Mozilla/5.0"

#: An open sooner than this after the message was sent is a proxy's fetch on arrival.
OPEN_TOO_SOON = timedelta(seconds=5)
#: Clicks on every link of a message within this span are a scanner's.
ALL_LINKS_WINDOW = timedelta(seconds=10)

_AGENTS = re.compile("|".join(f"(?:{p})" for p in MACHINE_AGENTS), re.IGNORECASE)


@functools.lru_cache(maxsize=4096)
def machine_reason(method: str, user_agent: str) -> str | None:
    """Why a request is a machine's from what the request itself shows, or None. (The timing
    rules need the message and its other events: the event writer applies them in SQL.)
    Cached: a server sees the same few hundred user agents again and again."""
    if method.upper() == "HEAD":
        return "HEAD request"
    agent = user_agent.strip()
    if not agent:
        return "no user agent"
    if agent == APPLE_PROXY_AGENT:
        return "Apple Mail Privacy Protection"
    match = _AGENTS.search(agent)
    if match:
        return f"user agent {match.group(0)}"
    return None
