"""A real IMAP server for the tests: Debian's dovecot-imapd with a throwaway configuration
(plain-text logins on a loopback port, one Maildir per user under a temporary folder)."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"

CONFIG = """
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
first_valid_uid = 1
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/users
}}
userdb {{
  driver = static
  args = uid={mail_user} gid={mail_group} home={root}/mail/%u
}}
mail_location = maildir:~/Maildir
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
  chroot =
}}
service anvil {{
  chroot =
}}
service stats {{
  unix_listener stats-reader {{
    mode = 0666
  }}
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
default_internal_user = {internal_user}
default_internal_group = {internal_group}
default_login_user = {login_user}
"""


@dataclass
class ImapServer:
    port: int
    root: Path

    def add_user(self, name: str, password: str) -> None:
        with (self.root / "users").open("a") as f:
            f.write(f"{name}:{{PLAIN}}{password}\n")

    def client(self, user: str, password: str):
        from imapclient import IMAPClient

        client = IMAPClient("127.0.0.1", port=self.port, ssl=False, timeout=30)
        client.login(user, password)
        return client

    def deliver(self, user: str, password: str, text: str, folder: str = "INBOX") -> None:
        """`text` appended to the user's folder, as a mail server would deliver it."""
        client = self.client(user, password)
        try:
            if not client.folder_exists(folder):
                client.create_folder(folder)
            client.append(folder, text.replace("\n", "\r\n").encode())
        finally:
            client.logout()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def imap_server() -> Iterator[ImapServer]:
    if not Path(DOVECOT).exists():
        pytest.fail(
            "the IMAP tests need Debian's dovecot-imapd (`apt-get install dovecot-imapd`; "
            ".ci/run installs it)"
        )
    # A short path: dovecot's Unix sockets live under base_dir (at most 108 bytes each).
    root = Path(tempfile.mkdtemp(prefix="dv-", dir="/tmp"))
    root.chmod(0o755)  # dovecot's unprivileged processes find their sockets and files here
    (root / "mail").mkdir()
    (root / "users").touch()
    if os.geteuid() == 0:  # dovecot refuses to run its login and internal processes as root
        names = {
            "internal_user": "dovecot",
            "internal_group": "dovecot",
            "login_user": "dovenull",
            "mail_user": "nobody",
            "mail_group": "nogroup",
        }
        (root / "mail").chmod(0o777)
    else:
        me = pwd.getpwuid(os.getuid()).pw_name
        group = os.getgid()
        names = dict.fromkeys(("internal_user", "login_user", "mail_user"), me)
        names |= {"internal_group": str(group), "mail_group": str(group)}
    port = _free_port()
    (root / "dovecot.conf").write_text(CONFIG.format(root=root, port=port, **names))
    proc = subprocess.Popen(
        [DOVECOT, "-F", "-c", str(root / "dovecot.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                log = (root / "dovecot.log").read_text() if (root / "dovecot.log").exists() else ""
                proc.kill()
                pytest.fail(f"dovecot did not start:\n{log[-2000:]}")
            time.sleep(0.05)
    try:
        yield ImapServer(port, root)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)
