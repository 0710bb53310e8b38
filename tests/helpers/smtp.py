"""A real SMTP server, in-process, that keeps every message it receives.

    sink = SmtpSink().start()
    ...  # point IDHUB_SMTP_URL at f"smtp://127.0.0.1:{sink.port}"
    msg = sink.wait_for(to="alice@acme.test", subject_contains="Reset your password")
    link = extract_link(msg, r"https?://\\S+/password/reset/\\S+")
    sink.stop()

``mark()`` returns a position in the mailbox; pass it as ``since=`` so that ``wait_for`` only looks at
messages that arrived afterwards (a hub shared by several tests sends several mails to the same user).
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import html
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage

from aiosmtpd.controller import Controller


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    at: float = field(default_factory=time.monotonic)

    @property
    def recipients(self) -> set[str]:
        """Envelope recipients plus the To/Cc headers, lower-cased."""
        found = {r.lower() for r in self.rcpt_tos}
        for header in ("To", "Cc"):
            for _name, addr in email.utils.getaddresses(self.message.get_all(header, [])):
                if addr:
                    found.add(addr.lower())
        return found

    @property
    def subject(self) -> str:
        return str(self.message.get("Subject", ""))


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's hook name)
        raw = envelope.original_content or envelope.content
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        self.sink._add(Received(envelope.mail_from, list(envelope.rcpt_tos), msg))
        return "250 Message accepted for delivery"


class SmtpSink:
    """An aiosmtpd server on 127.0.0.1 and a free port, collecting messages in memory."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.port = port or free_port()
        self._messages: list[Received] = []
        self._cond = threading.Condition()
        self._controller = Controller(_Handler(self), hostname=host, port=self.port)

    # lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> SmtpSink:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    @staticmethod
    def extract_link(msg: EmailMessage, pattern: str = r"https?://[^\s\"'<>]+") -> str:
        return extract_link(msg, pattern)

    # mailbox -------------------------------------------------------------------------------------------
    def _add(self, rec: Received) -> None:
        with self._cond:
            self._messages.append(rec)
            self._cond.notify_all()

    @property
    def messages(self) -> list[Received]:
        with self._cond:
            return list(self._messages)

    def mark(self) -> int:
        """The current end of the mailbox, for ``since=``."""
        with self._cond:
            return len(self._messages)

    def find(
        self, *, to: str | None = None, subject_contains: str | None = None, since: int = 0
    ) -> list[Received]:
        with self._cond:
            candidates = self._messages[since:]
        out = []
        for rec in candidates:
            if to is not None and to.lower() not in rec.recipients:
                continue
            if subject_contains is not None and subject_contains.lower() not in rec.subject.lower():
                continue
            out.append(rec)
        return out

    def wait_for(
        self,
        *,
        to: str | None = None,
        subject_contains: str | None = None,
        since: int = 0,
        timeout: float = 10,
    ) -> EmailMessage:
        """The first matching message (after ``since``), waiting up to ``timeout`` seconds for it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = self.find(to=to, subject_contains=subject_contains, since=since)
                if found:
                    return found[0].message
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [(sorted(r.recipients), r.subject) for r in self._messages]
                    raise AssertionError(
                        f"no mail to={to!r} subject~{subject_contains!r} within {timeout}s; mailbox: {seen}"
                    )
                self._cond.wait(min(remaining, 0.25))

    def assert_nothing_for(
        self, *, to: str, subject_contains: str | None = None, since: int = 0, wait: float = 3
    ) -> None:
        """Poll the mailbox for ``wait`` seconds and fail if a matching message arrives."""
        deadline = time.monotonic() + wait
        while True:
            found = self.find(to=to, subject_contains=subject_contains, since=since)
            if found:
                raise AssertionError(f"unexpected mail to {to}: {[r.subject for r in found]}")
            if time.monotonic() >= deadline:
                return
            time.sleep(0.2)


def message_texts(msg: EmailMessage) -> list[str]:
    """The decoded text of every text/plain and text/html part."""
    texts = []
    for part in msg.walk():
        if part.get_content_maintype() == "text":
            try:
                texts.append(part.get_content())
            except (LookupError, ValueError):
                payload = part.get_payload(decode=True) or b""
                texts.append(payload.decode("utf-8", "replace"))
    return texts


def extract_link(msg: EmailMessage, pattern: str = r"https?://[^\s\"'<>]+") -> str:
    """The first URL matching ``pattern`` in the message (plain text first, then HTML, entities decoded)."""
    regex = re.compile(pattern)
    texts = message_texts(msg)
    texts.sort(key=lambda t: "<html" in t.lower() or "<a " in t.lower())  # plain text parts first
    for text in texts:
        m = regex.search(html.unescape(text))
        if m:
            return m.group(0).rstrip(".,;)>\"'")
    raise AssertionError(
        f"no link matching {pattern!r} in mail {msg.get('Subject')!r}:\n" + "\n---\n".join(texts)
    )
