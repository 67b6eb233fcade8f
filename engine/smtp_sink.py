"""The local SMTP sink: a real SMTP server (aiosmtpd) that keeps every message in a Maildir.

Senders with no SMTP host of their own deliver here in the embedded setup, so a user can open
what was "sent" (`PENGUIN_HOME/maildir/new/`) and tests can assert on what arrived.
"""

from __future__ import annotations

import mailbox
from email.message import Message
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Mailbox


class SmtpSink:
    def __init__(self, maildir: Path, host: str = "127.0.0.1", port: int = 2525):
        maildir.parent.mkdir(parents=True, exist_ok=True)
        self.maildir = maildir
        self.host = host
        self.port = port
        # SMTPUTF8: addresses with a non-ASCII local part arrive as they are (RFC 6531).
        self._controller = Controller(
            Mailbox(maildir), hostname=host, port=port, enable_SMTPUTF8=True
        )

    def start(self) -> SmtpSink:
        try:
            self._controller.start()
        except OSError as exc:  # aiosmtpd wraps bind errors from its server thread
            raise OSError(
                f"cannot start the SMTP sink on {self.host}:{self.port}: {exc}; "
                "set PENGUIN_SMTP_SINK_PORT to a free port"
            ) from exc
        return self

    def stop(self) -> None:
        self._controller.stop()

    def messages(self) -> list[Message]:
        return list(mailbox.Maildir(self.maildir, create=True))

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
