"""What tracking adds to a rendered message: the open pixel, click links, unsubscribe headers.

* **Opens** (the campaign tracks them, the message has an HTML part): a 1x1 image at the end of
  the body.
* **Clicks** (the campaign tracks them): every ``http(s)`` link of the HTML part (``href`` of
  ``<a>`` and ``<area>``) and of the text part goes through ``/c/TOKEN``, numbered in the order
  they appear, HTML first; the token holds the original URL, so the server can only ever send a
  click where the message pointed. Other links (``mailto:``, anchors) are left as they are.
* **Unsubscribe**, whatever the tracking flags (RFC 8058; mailbox providers require it of bulk
  senders): ``List-Unsubscribe: <https://.../u/TOKEN>, <mailto:...>`` and
  ``List-Unsubscribe-Post: List-Unsubscribe=One-Click``.

A campaign with tracking off gets no pixel and no rewritten link.
"""

from __future__ import annotations

import html
import re
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.tracking.tokens import Kind, Tokens

if TYPE_CHECKING:
    from engine.config import Settings

#: An ``href`` of an ``<a>`` or ``<area>`` tag, quoted; group 3 is the value (HTML-escaped).
_HREF = re.compile(
    r"""(<(?:a|area)\b[^>]*?\bhref\s*=\s*)(["'])(.*?)\2""", re.IGNORECASE | re.DOTALL
)
#: A URL in plain text, up to white space or a character that cannot end one unquoted.
_TEXT_URL = re.compile(r"""https?://[^\s<>"'()\[\]{}]+""", re.IGNORECASE)
#: Punctuation after a URL in prose belongs to the sentence.
_TRAILING = ".,;:!?"
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)
_WEB = re.compile(r"https?://", re.IGNORECASE)


@dataclass(frozen=True)
class Tracking:
    """How to make a message's links: the key's `tokens` and the server's public URL."""

    tokens: Tokens
    public_url: str

    def url(self, kind: Kind, tenant_id: uuid.UUID, message_id: uuid.UUID, **link: object) -> str:
        path = {Kind.OPEN: "o", Kind.CLICK: "c", Kind.UNSUBSCRIBE: "u"}[kind]
        token = self.tokens.make(kind, tenant_id, message_id, **link)  # type: ignore[arg-type]
        return f"{self.public_url.rstrip('/')}/{path}/{token}"


@dataclass(frozen=True)
class Tracked:
    body_text: str
    body_html: str | None
    headers: dict[str, str]


def _text_urls(text: str) -> list[tuple[int, int]]:
    spans = []
    for m in _TEXT_URL.finditer(text):
        end = m.end()
        while end > m.start() and text[end - 1] in _TRAILING:
            end -= 1
        spans.append((m.start(), end))
    return spans


def decorate(
    tracking: Tracking,
    tenant_id: uuid.UUID,
    message_id: uuid.UUID,
    *,
    body_text: str,
    body_html: str | None,
    mailto: str,
    opens: bool,
    clicks: bool,
) -> Tracked:
    """The message's parts and headers with tracking added (see the module docstring)."""
    if clicks:
        html_links = [m for m in _HREF.finditer(body_html or "") if _WEB.match(m.group(3).strip())]
        text_links = _text_urls(body_text)
        total = len(html_links) + len(text_links)

        def click(number: int, url: str) -> str:
            return tracking.url(
                Kind.CLICK, tenant_id, message_id, link=number, links=total, url=url
            )

        if body_html is not None and html_links:
            parts, last = [], 0
            for number, m in enumerate(html_links):
                target = click(number, html.unescape(m.group(3).strip()))
                parts += [body_html[last : m.start(3)], html.escape(target, quote=True)]
                last = m.end(3)
            body_html = "".join(parts) + body_html[last:]
        if text_links:
            parts, last = [], 0
            for number, (start, end) in enumerate(text_links, start=len(html_links)):
                parts += [body_text[last:start], click(number, body_text[start:end])]
                last = end
            body_text = "".join(parts) + body_text[last:]
    if opens and body_html is not None:
        src = html.escape(tracking.url(Kind.OPEN, tenant_id, message_id), quote=True)
        pixel = f'<img src="{src}" width="1" height="1" alt="" style="display:none">'
        ends = list(_BODY_END.finditer(body_html))
        end = ends[-1] if ends else None
        body_html = (
            body_html[: end.start()] + pixel + body_html[end.start() :]
            if end
            else body_html + pixel
        )
    unsubscribe = tracking.url(Kind.UNSUBSCRIBE, tenant_id, message_id)
    headers = {
        "List-Unsubscribe": f"<{unsubscribe}>, <{mailto}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
    return Tracked(body_text, body_html, headers)


def tracking_for(settings: Settings) -> Tracking:
    """The tracking links of this installation: its secret key, its public URL."""
    from engine.tracking.tokens import secret_key

    return Tracking(Tokens(secret_key(settings.home, settings.secret_key)), settings.tracking_url)
