"""Inbound messages as mail servers and people send them: replies, auto-replies, bounces in
the formats of several MTAs, an ARF complaint. Each a function of the original message's
Message-ID and addresses, so tests can aim them at messages the engine really sent."""

from __future__ import annotations


def reply(
    to: str,
    author: str,
    original_id: str | None,
    *,
    subject: str = "Re: Quick question",
    stamped: str = "",
) -> str:
    """A person's reply; `original_id` None: one that names no message (a new message, or
    its references stripped); `stamped`: header lines a receiving server put on top."""
    references = (
        f"In-Reply-To: <{original_id}>\nReferences: <older@mail.example> <{original_id}>\n"
        if original_id
        else ""
    )
    return f"""{stamped}From: Ann Author <{author}>
To: {to}
Subject: {subject}
Message-ID: <reply-{abs(hash((author, original_id)))}@mail.example>
{references}Date: Fri, 20 Nov 2026 11:00:00 +0000
Content-Type: text/plain; charset=utf-8

Sounds interesting, tell me more.

> Hi Ann, ...
"""


def auto_reply(to: str, author: str, original_id: str, *, german: bool = False) -> str:
    if german:
        headers = "Subject: Abwesenheitsnotiz: Quick question\n"
    else:
        headers = "Subject: Out of Office: Quick question\nAuto-Submitted: auto-replied\n"
    return f"""From: {author}
To: {to}
{headers}Message-ID: <auto-{abs(hash((author, original_id, german)))}@mail.example>
In-Reply-To: <{original_id}>
Date: Fri, 20 Nov 2026 11:00:00 +0000
Content-Type: text/plain; charset=utf-8

I am out of the office until Monday.
"""


def unsubscribe(to: str, author: str) -> str:
    return f"""From: {author}
To: {to}
Subject: unsubscribe
Message-ID: <unsub-{abs(hash(author))}@mail.example>
Date: Fri, 20 Nov 2026 11:00:00 +0000
Content-Type: text/plain; charset=utf-8

"""


def postfix_dsn(to: str, recipient: str, original_id: str, *, hard: bool = True) -> str:
    """RFC 3464, as Postfix writes it: failed (5.1.1) or delayed (4.2.2)."""
    action, status, diagnostic = (
        ("failed", "5.1.1", "550 5.1.1 <{r}>: Recipient address rejected: User unknown")
        if hard
        else ("delayed", "4.2.2", "452 4.2.2 <{r}>: Mailbox full")
    )
    diagnostic = diagnostic.format(r=recipient)
    return f"""From: MAILER-DAEMON@mx.example (Mail Delivery System)
To: {to}
Subject: Undelivered Mail Returned to Sender
Message-ID: <dsn-{abs(hash((recipient, original_id, hard)))}@mx.example>
Date: Fri, 20 Nov 2026 10:05:00 +0000
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="BOUNDARY"

--BOUNDARY
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mx.example. I'm sorry to have to inform you that your
message could not be delivered to one or more recipients.

--BOUNDARY
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example
Arrival-Date: Fri, 20 Nov 2026 10:04:00 +0000

Final-Recipient: rfc822; {recipient}
Original-Recipient: rfc822;{recipient}
Action: {action}
Status: {status}
Diagnostic-Code: smtp; {diagnostic}

--BOUNDARY
Content-Type: text/rfc822-headers

From: Sales <{to}>
To: {recipient}
Subject: Quick question
Message-ID: <{original_id}>

--BOUNDARY--
"""


def exim_bounce(to: str, recipient: str, original_id: str) -> str:
    """Exim's plain-text bounce, with X-Failed-Recipients and the original quoted inline."""
    return f"""From: Mail Delivery System <Mailer-Daemon@exim.example>
To: {to}
Subject: Mail delivery failed: returning message to sender
Message-ID: <exim-{abs(hash((recipient, original_id)))}@exim.example>
X-Failed-Recipients: {recipient}
Auto-Submitted: auto-replied
Date: Fri, 20 Nov 2026 10:05:00 +0000
Content-Type: text/plain; charset=us-ascii

This message was created automatically by mail delivery software.

A message that you sent could not be delivered to one or more of its
recipients. This is a permanent error. The following address(es) failed:

  {recipient}
    SMTP error from remote mail server after RCPT TO:<{recipient}>:
    550 5.1.1 User unknown

------ This is a copy of the message, including all the headers. ------

From: Sales <{to}>
To: {recipient}
Subject: Quick question
Message-ID: <{original_id}>

Hi there
"""


def qmail_bounce(to: str, recipient: str, original_id: str) -> str:
    return f"""From: MAILER-DAEMON@qmail.example
To: {to}
Subject: failure notice
Message-ID: <qmail-{abs(hash((recipient, original_id)))}@qmail.example>
Date: Fri, 20 Nov 2026 10:05:00 +0000

Hi. This is the qmail-send program at qmail.example.
I'm afraid I wasn't able to deliver your message to the following addresses.
This is a permanent error; I've given up. Sorry it didn't work out.

<{recipient}>:
Sorry, no mailbox here by that name. (#5.1.1)

--- Below this line is a copy of the message.

From: Sales <{to}>
To: {recipient}
Subject: Quick question
Message-ID: <{original_id}>

Hi there
"""


def arf_complaint(to: str, recipient: str, original_id: str) -> str:
    """RFC 5965, as mailbox providers' feedback loops send it."""
    return f"""From: Feedback Loop <fbl@isp.example>
To: {to}
Subject: FW: Quick question
Message-ID: <arf-{abs(hash((recipient, original_id)))}@isp.example>
Date: Fri, 20 Nov 2026 12:00:00 +0000
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="ARF"

--ARF
Content-Type: text/plain; charset=us-ascii

This is an email abuse report for an email message received from IP 192.0.2.1.

--ARF
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: SomeGenerator/1.0
Version: 1
Original-Mail-From: <{to}>
Original-Rcpt-To: <{recipient}>
Arrival-Date: Fri, 20 Nov 2026 10:00:00 +0000

--ARF
Content-Type: message/rfc822

From: Sales <{to}>
To: {recipient}
Subject: Quick question
Message-ID: <{original_id}>

Hi there
--ARF--
"""
