"""Telling inbound mail apart: replies, auto-replies, bounces of several MTAs, complaints."""

from __future__ import annotations

from email import message_from_string, policy

import pytest

from engine.mailboxes.classify import Kind, classify
from tests.engine import mail_samples as samples

SENDER, CONTACT, ORIGINAL = "sales@acme.example", "ann@customer.example", "m-1@acme.example"


def _classify(text: str):
    return classify(message_from_string(text, policy=policy.default))


def test_a_reply_names_the_message_it_answers_first():
    got = _classify(samples.reply(SENDER, CONTACT, ORIGINAL))
    assert got.kind is Kind.REPLY
    assert got.refers_to == (ORIGINAL, "older@mail.example")
    assert got.sender == CONTACT


@pytest.mark.parametrize("german", [False, True])
def test_an_out_of_office_answer_is_an_auto_reply(german):
    got = _classify(samples.auto_reply(SENDER, CONTACT, ORIGINAL, german=german))
    assert got.kind is Kind.AUTO_REPLY and got.refers_to == (ORIGINAL,)


@pytest.mark.parametrize(
    ("make", "hard"),
    [
        (lambda: samples.postfix_dsn(SENDER, CONTACT, ORIGINAL, hard=True), True),
        (lambda: samples.postfix_dsn(SENDER, CONTACT, ORIGINAL, hard=False), False),
        (lambda: samples.exim_bounce(SENDER, CONTACT, ORIGINAL), True),
        (lambda: samples.qmail_bounce(SENDER, CONTACT, ORIGINAL), True),
    ],
    ids=["postfix-hard", "postfix-soft", "exim", "qmail"],
)
def test_bounces_of_several_mtas_name_the_address_the_original_and_how_hard(make, hard):
    got = _classify(make())
    assert got.kind is Kind.BOUNCE
    assert got.addresses == (CONTACT,)
    assert got.hard is hard
    assert got.refers_to[0] == ORIGINAL


def test_an_arf_report_is_a_complaint_about_the_original_recipient():
    got = _classify(samples.arf_complaint(SENDER, CONTACT, ORIGINAL))
    assert got.kind is Kind.COMPLAINT
    assert (got.addresses, got.refers_to) == ((CONTACT,), (ORIGINAL,))
    assert got.detail == "feedback type abuse"


@pytest.mark.parametrize("subject", ["unsubscribe", "Unsubscribe", "UNSUBSCRIBE!", "stop"])
def test_an_unsubscribe_email_is_an_unsubscribe(subject):
    text = samples.unsubscribe(SENDER, CONTACT).replace(
        "Subject: unsubscribe", f"Subject: {subject}"
    )
    assert _classify(text).kind is Kind.UNSUBSCRIBE


def test_a_reply_that_mentions_unsubscribing_is_still_a_reply():
    text = samples.reply(SENDER, CONTACT, ORIGINAL, subject="Re: how do I unsubscribe my team?")
    assert _classify(text).kind is Kind.REPLY


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Subject: x\n\n",
        "Content-Type: multipart/report; report-type=delivery-status; boundary=B\n\n--B\n",
        "Content-Type: multipart/report; report-type=feedback-report\n\nno parts",
        "From: <<<>>>\nIn-Reply-To: <<a>\nSubject: =?utf-8?q?broken\n\n\x00\xff",
    ],
)
def test_malformed_messages_are_classified_without_raising(text):
    assert _classify(text).kind in set(Kind)


def test_an_encoded_out_of_office_subject_is_read_decoded():
    text = samples.reply(SENDER, CONTACT, ORIGINAL).replace(
        "Subject: Re: Quick question",
        "Subject: =?utf-8?q?Abwesenheitsnotiz=3A_Urlaub?=",
    )
    assert _classify(text).kind is Kind.AUTO_REPLY


@pytest.mark.parametrize(
    "subject", ["Re: Stop", "Re: Vacation rentals for your team", "Re: Out of office supplies"]
)
def test_a_reply_quoting_a_subject_that_looks_like_a_rule_is_a_reply(subject):
    text = samples.reply(SENDER, CONTACT, ORIGINAL, subject=subject)
    assert _classify(text).kind is Kind.REPLY


def test_an_address_hidden_in_an_encoded_display_name_is_not_the_sender():
    text = samples.unsubscribe(SENDER, CONTACT).replace(
        f"From: {CONTACT}", "From: =?utf-8?q?=3Cvictim=40prospect.example=3E?= <me@evil.example>"
    )
    assert _classify(text).sender == "me@evil.example"


def test_undecodable_header_bytes_are_kept_as_replacement_characters():
    from email import message_from_bytes

    raw = (
        samples.reply(SENDER, CONTACT, ORIGINAL)
        .encode()
        .replace(b"Subject: Re: Quick question", "Subject: Re: café\x00".encode("latin-1"))
    )
    got = classify(message_from_bytes(raw, policy=policy.compat32))
    assert got.kind is Kind.REPLY
    from engine.mailboxes.classify import clean

    assert clean("caf\udce9\x00") == "caf\ufffd"
