"""What tracking adds to a rendered message: the open pixel, click links, unsubscribe headers.

* **Opens** (the campaign tracks them, the message has an HTML part): a 1x1 image at the end of
  the body.
* **Clicks** (the campaign tracks them): every ``http(s)`` link of the HTML part (the ``href``
  of ``<a>`` and ``<area>`` tags, as an HTML parser finds them: not in comments, not
  ``data-href``) and of the text part goes through ``/c/TOKEN``, numbered within its part; the
  token holds the original URL, so the server can only ever send a click where the message
  pointed. Only links the campaign's template wrote are rewritten: the rendered URL must be one
  the template holds, or extend one that has its host and a path (``https://acme.example/``
  followed by ``{{ slug }}``): a contact field that holds a URL never becomes a link signed with
  the sender's tracking domain. Other links (``mailto:``, anchors) are left as they are.
* **Unsubscribe**, whatever the tracking flags (RFC 8058; mailbox providers require it of bulk
  senders): ``List-Unsubscribe: <https://.../u/TOKEN>, <mailto:...>`` and
  ``List-Unsubscribe-Post: List-Unsubscribe=One-Click``.

A campaign with tracking off gets no pixel and no rewritten link.
"""

from __future__ import annotations

import html
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import TYPE_CHECKING

from engine.tracking.tokens import Kind, Part, Tokens

if TYPE_CHECKING:
    from engine.config import Settings

#: One attribute of a start tag: its name, and its value quoted or not (group 2).
_ATTRIBUTE = re.compile(r"""([^\s=/>"']+)(?:\s*=\s*("[^"]*"|'[^']*'|[^\s>"']+))?""")
#: A URL in plain text, up to white space or a character that cannot be part of one unquoted.
_TEXT_URL = re.compile(r"""https?://[^\s<>"\[\]{}]+""", re.IGNORECASE)
#: A URL in a template, up to where a template expression may start.
_TEMPLATE_URL = re.compile(r"""https?://[^\s<>"'{}]+""", re.IGNORECASE)
#: Punctuation after a URL in prose belongs to the sentence.
_TRAILING = ".,;:!?'"
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)
_WEB = re.compile(r"https?://", re.IGNORECASE)


@dataclass(frozen=True)
class Tracking:
    """How to make a message's links: the key's `tokens` and the server's URL. `public` says
    whether that URL was configured (PENGUIN_PUBLIC_URL) or is this machine's default, which
    only mail to the local sink may carry: a recipient elsewhere cannot reach it."""

    tokens: Tokens
    public_url: str
    public: bool = True

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
    """Spans of the URLs in `text`: prose punctuation after one, and a closing parenthesis it
    did not open (``(see https://x.example/a)``), belong to the sentence."""
    spans = []
    for m in _TEXT_URL.finditer(text):
        start, end = m.start(), m.end()
        while end > start:
            last = text[end - 1]
            url = text[start:end]
            if last in _TRAILING or (last == ")" and url.count("(") < url.count(")")):
                end -= 1
            else:
                break
        spans.append((start, end))
    return spans


class _Hrefs(HTMLParser):
    """Where the ``href`` values of ``<a>`` and ``<area>`` tags are: (start, end, value as
    written) in the parsed text. Linear in the text: each tag's attributes are read from that
    tag's own text."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=False)
        self.spans: list[tuple[int, int, str]] = []
        self._lines = [0]
        for m in re.finditer("\n", text):
            self._lines.append(m.end())
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: object) -> None:
        if tag not in ("a", "area"):
            return
        raw = self.get_starttag_text() or ""
        line, column = self.getpos()
        at = self._lines[line - 1] + column
        name_end = len(tag) + 1  # after "<a"
        for m in _ATTRIBUTE.finditer(raw, name_end):
            if m.group(1).lower() == "href" and m.group(2) is not None:
                value_start, value_end = m.start(2), m.end(2)
                if raw[value_start] in "\"'":
                    value_start, value_end = value_start + 1, value_end - 1
                self.spans.append((at + value_start, at + value_end, raw[value_start:value_end]))
                break

    handle_startendtag = handle_starttag


def template_links(*sources: str | None) -> Callable[[str], bool]:
    """Whether a rendered URL is a link the templates `sources` wrote (see the module
    docstring): one they hold, or one that extends a URL of theirs with a host and a path."""
    exact: set[str] = set()
    prefixes: list[str] = []
    for source in sources:
        for m in _TEMPLATE_URL.finditer(html.unescape(source or "")):
            url = m.group(0)
            exact.add(url)
            if "/" in url.split("://", 1)[1]:  # the host is fixed by the template
                prefixes.append(url)

    def allowed(url: str) -> bool:
        return url in exact or any(url.startswith(p) for p in prefixes)

    return allowed


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
    links_allowed: Callable[[str], bool] | None = None,
) -> Tracked:
    """The message's parts and headers with tracking added (see the module docstring);
    `links_allowed` (`template_links` of the templates) says which URLs are the campaign's."""
    if clicks:
        allowed = links_allowed or (lambda url: True)
        html_links = [
            (a, b, html.unescape(v).strip())
            for a, b, v in (_Hrefs(body_html).spans if body_html else [])
        ]
        html_links = [(a, b, u) for a, b, u in html_links if _WEB.match(u) and allowed(u)]
        text_links = [(a, b) for a, b in _text_urls(body_text) if allowed(body_text[a:b])]

        def click(part: Part, number: int, total: int, url: str) -> str:
            return tracking.url(
                Kind.CLICK, tenant_id, message_id, link=number, links=total, url=url, part=part
            )

        if body_html is not None and html_links:
            parts, last = [], 0
            for number, (start, end, url) in enumerate(html_links):
                target = click(Part.HTML, number, len(html_links), url)
                parts += [body_html[last:start], html.escape(target, quote=True)]
                last = end
            body_html = "".join(parts) + body_html[last:]
        if text_links:
            parts, last = [], 0
            for number, (start, end) in enumerate(text_links):
                url = body_text[start:end]
                parts += [body_text[last:start], click(Part.TEXT, number, len(text_links), url)]
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
    """The tracking links of this installation: its current secret key (previous keys only
    verify, in the tracking server), its public URL."""
    from engine.tracking.tokens import secret_key

    tokens = Tokens(secret_key(settings.home, settings.secret_key))
    return Tracking(tokens, settings.tracking_url, public=settings.public_url is not None)
