"""Tracking links: tokens that only this key makes, and what a message gets of them."""

from __future__ import annotations

import base64
import html
import os
import re
import stat
import uuid

import pytest

from engine.tracking.links import Tracking, decorate
from engine.tracking.machine import machine_reason
from engine.tracking.tokens import Kind, SecretKeyError, Tokens, secret_key

KEY = "k" * 43
TENANT, MESSAGE = uuid.uuid4(), uuid.uuid4()


def _tracking() -> Tracking:
    return Tracking(Tokens(KEY), "https://t.example.com")


def test_a_token_says_what_it_was_made_for_and_nothing_else_verifies():
    tokens = Tokens(KEY)
    click = tokens.make(Kind.CLICK, TENANT, MESSAGE, link=2, links=3, url="https://a.example/x?y=1")
    read = tokens.read(Kind.CLICK, click)
    assert (read.tenant_id, read.message_id, read.link, read.links, read.url) == (
        TENANT,
        MESSAGE,
        2,
        3,
        "https://a.example/x?y=1",
    )
    opened = tokens.make(Kind.OPEN, TENANT, MESSAGE)
    assert tokens.read(Kind.OPEN, opened).message_id == MESSAGE
    # Another kind, another key, a cut or altered token: nothing.
    assert tokens.read(Kind.UNSUBSCRIBE, opened) is None
    assert Tokens("o" * 43).read(Kind.OPEN, opened) is None
    assert tokens.read(Kind.OPEN, opened[:-1]) is None
    assert tokens.read(Kind.OPEN, "garbage") is None
    assert tokens.read(Kind.OPEN, "é.é") is None


def test_an_altered_click_target_does_not_verify():
    tokens = Tokens(KEY)
    token = tokens.make(Kind.CLICK, TENANT, MESSAGE, link=0, links=1, url="https://good.example")
    payload, signature = token.rsplit(".", 1)
    raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    evil = raw.replace(b"good.example", b"evil.example")
    forged = base64.urlsafe_b64encode(evil).rstrip(b"=").decode() + "." + signature
    assert tokens.read(Kind.CLICK, forged) is None


def test_the_secret_key_is_made_once_readable_by_its_owner_only(tmp_path):
    first = secret_key(tmp_path, None)
    assert len(first) >= 32 and secret_key(tmp_path, None) == first
    mode = stat.S_IMODE(os.stat(tmp_path / "secret_key").st_mode)
    assert mode == 0o600
    assert secret_key(tmp_path, "x" * 40) == "x" * 40
    assert [p.name for p in tmp_path.iterdir()] == ["secret_key"]  # no temporary file left


def test_a_short_secret_key_is_refused_with_what_to_do(tmp_path):
    with pytest.raises(SecretKeyError, match="PENGUIN_SECRET_KEY is 5 characters long"):
        secret_key(tmp_path, "short")
    (tmp_path / "secret_key").write_text("tiny\n")
    with pytest.raises(SecretKeyError, match="delete the file"):
        secret_key(tmp_path, None)


def test_previous_keys_come_from_the_environment_and_a_short_one_is_named_not_shown(tmp_path):
    from engine.config import ConfigError, Settings
    from engine.tracking.tokens import tokens_for

    older, oldest = "o" * 43, "p" * 43
    env = {
        "PENGUIN_HOME": str(tmp_path),
        "PENGUIN_SECRET_KEY": KEY,
        "PENGUIN_SECRET_KEY_PREVIOUS": f" {older} , {oldest},",
    }
    settings = Settings.from_env(env)
    assert settings.previous_secret_keys == (older, oldest)
    tokens = tokens_for(settings)
    for key in (older, oldest, KEY):
        assert tokens.read(Kind.OPEN, Tokens(key).make(Kind.OPEN, TENANT, MESSAGE)) is not None
    made = tokens.make(Kind.OPEN, TENANT, MESSAGE)
    assert Tokens(KEY).read(Kind.OPEN, made) and not Tokens(older).read(Kind.OPEN, made)
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({**env, "PENGUIN_SECRET_KEY_PREVIOUS": f"{older},hunter2"})
    assert "key 2 of 2 is 7 characters long" in str(refused.value)
    assert "hunter2" not in str(refused.value)


def _click_targets(tracking: Tracking, urls: list[str]) -> list[tuple[int, int, str]]:
    out = []
    for url in urls:
        token = url.rsplit("/c/", 1)[1]
        read = tracking.tokens.read(Kind.CLICK, token)
        out.append((read.link, read.links, read.url))
    return out


def test_a_tracked_message_gets_a_pixel_its_web_links_rewritten_and_one_click_headers():
    tracking = _tracking()
    body_html = (
        '<html><body><p><a href="https://a.example/x?p=1&amp;q=2">A</a> '
        "<a class='b' HREF='http://b.example'>B</a> <a href=\"mailto:me@x.example\">me</a> "
        '<a href="#top">top</a></p></body></html>'
    )
    body_text = "See https://c.example/page. Or (https://d.example/q?x=1), mailto:me@x.example"
    out = decorate(
        tracking,
        TENANT,
        MESSAGE,
        body_text=body_text,
        body_html=body_html,
        mailto="mailto:sales@acme.example?subject=unsubscribe",
        opens=True,
        clicks=True,
    )
    hrefs = [
        html.unescape(h) for h in re.findall(r"""href=["']([^"']*)["']""", out.body_html, re.I)
    ]
    assert hrefs[2:] == ["mailto:me@x.example", "#top"]
    text_urls = re.findall(r"https://t\.example\.com/c/[\w-]+\.[\w-]+", out.body_text)
    assert _click_targets(tracking, hrefs[:2] + text_urls) == [  # numbered within their part
        (0, 2, "https://a.example/x?p=1&q=2"),
        (1, 2, "http://b.example"),
        (0, 2, "https://c.example/page"),
        (1, 2, "https://d.example/q?x=1"),
    ]
    assert out.body_text.endswith("), mailto:me@x.example")  # prose punctuation kept outside
    pixel = re.search(r'<img src="https://t\.example\.com/o/([^"]+)"[^>]*></body>', out.body_html)
    assert pixel and tracking.tokens.read(Kind.OPEN, html.unescape(pixel.group(1))).message_id
    unsubscribe, mailto = out.headers["List-Unsubscribe"].split(", ")
    token = unsubscribe.removeprefix("<https://t.example.com/u/").removesuffix(">")
    assert tracking.tokens.read(Kind.UNSUBSCRIBE, token).message_id == MESSAGE
    assert mailto == "<mailto:sales@acme.example?subject=unsubscribe>"
    assert out.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_a_campaign_with_tracking_off_gets_no_pixel_and_no_rewritten_link():
    body_html = '<p><a href="https://a.example">A</a></p>'
    out = decorate(
        _tracking(),
        TENANT,
        MESSAGE,
        body_text="https://a.example",
        body_html=body_html,
        mailto="mailto:s@x.example",
        opens=False,
        clicks=False,
    )
    assert (out.body_text, out.body_html) == ("https://a.example", body_html)
    assert "List-Unsubscribe-Post" in out.headers  # unsubscribing is not tracking


@pytest.mark.parametrize(
    ("method", "agent", "reason"),
    [
        ("HEAD", "Mozilla/5.0 (Macintosh) Safari/605", "HEAD request"),
        ("GET", "Mozilla/5.0", "Apple Mail Privacy Protection"),
        ("GET", "Mozilla/5.0 (Windows NT 5.1) (via ggpht.com GoogleImageProxy)", "user agent"),
        ("GET", "YahooMailProxy; https://help.yahoo.com", "user agent"),
        ("GET", "Mozilla/5.0 (compatible; Barracuda Sentinel)", "user agent"),
        ("GET", "python-requests/2.31", "user agent"),
        ("GET", "", "no user agent"),
        ("GET", "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0) AppleWebKit/605.1.15", None),
        ("GET", "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Thunderbird/128.0", None),
    ],
)
def test_machine_requests_are_told_from_a_persons(method, agent, reason):
    found = machine_reason(method, agent)
    assert (found is None) == (reason is None)
    if reason:
        assert found.startswith(reason)


def _clicks(body_text="", body_html=None, allowed=None):
    return decorate(
        _tracking(),
        TENANT,
        MESSAGE,
        body_text=body_text,
        body_html=body_html,
        mailto="mailto:s@x.example",
        opens=False,
        clicks=True,
        links_allowed=allowed,
    )


def test_only_links_the_template_wrote_are_rewritten_never_a_url_from_contact_data():
    from engine.tracking.links import template_links

    template = (
        '<a href="https://acme.example/offer/{{ slug }}">offer</a> '
        '<a href="https://acme.example/pricing">pricing</a> '
        '<a href="https://{{ company_site }}">site</a> Hi {{ first_name }}'
    )
    allowed = template_links("See https://acme.example/docs", template)
    rendered = (
        '<a href="https://acme.example/offer/ann">offer</a> '
        '<a href="https://acme.example/pricing">pricing</a> '
        '<a href="https://evil.example/login">site</a> Hi https://evil.example/x'
    )
    out = _clicks("See https://acme.example/docs, https://evil.example/y", rendered, allowed)
    assert "evil.example/login" in out.body_html and "https://evil.example/x" in out.body_html
    assert "https://evil.example/y" in out.body_text
    assert out.body_html.count("/c/") == 2 and out.body_text.count("/c/") == 1
    assert not allowed("https://acme.example.evil.example/")  # no host from the contact
    assert not allowed("https://acme.example/pricingx") or allowed("https://acme.example/pricing")


def test_the_html_parser_finds_the_real_hrefs_only():
    body_html = (
        '<!-- <a href="https://commented.example">x</a> -->'
        '<a data-href="https://data.example" href="https://real.example">r</a>'
        "<a href=https://unquoted.example/p>u</a>"
        '<a title="href=https://title.example" href="https://second.example">t</a>'
    )
    out = _clicks(body_html=body_html)
    assert 'data-href="https://data.example"' in out.body_html
    assert "https://commented.example" in out.body_html
    assert "https://title.example" in out.body_html
    assert out.body_html.count("/c/") == 3  # real, unquoted, second


def test_a_url_in_parentheses_keeps_its_own_parentheses_and_apostrophes():
    text = "Read (https://en.wikipedia.org/wiki/Penguin_(bird)) or https://x.example/it's."
    out = _clicks(text)
    tokens = re.findall(r"/c/([\w-]+\.[\w-]+)", out.body_text)
    urls = [_tracking().tokens.read(Kind.CLICK, t).url for t in tokens]
    assert urls == ["https://en.wikipedia.org/wiki/Penguin_(bird)", "https://x.example/it's"]
    assert out.body_text.startswith("Read (https://t.example.com/c/")
    assert ") or https://t.example.com/c/" in out.body_text and out.body_text.endswith(".")


@pytest.mark.timeout(60)  # a hang guard: this input took minutes with a backtracking pattern
def test_a_huge_unclosed_tag_soup_is_read_in_one_pass():
    soup = "<a " * 60_000 + '<a href="https://acme.example/">x</a>'
    out = _clicks(body_html=soup)
    assert out.body_html.count("/c/") <= 1
