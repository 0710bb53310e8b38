"""Outgoing mail: templates rendered into a multipart/alternative message, handed to a transport.

Plain Python, no Flask. Message bodies contain reset links: they are never logged.
"""

from __future__ import annotations

import email.utils
import logging
import os
import re
import smtplib
import ssl
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import jinja2

from idp.outbox import write_message

log = logging.getLogger("idhub.mail")

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
SMTP_TIMEOUT = 10.0
_TEMPLATE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class MailError(RuntimeError):
    """A message could not be rendered or delivered. The text never contains the body."""


class Transport(Protocol):
    def deliver(self, msg: EmailMessage) -> object: ...


class SmtpTransport:
    """Delivers over ``smtp://[user:pass@]host:port[?starttls=true]`` or ``smtps://`` (implicit TLS)."""

    def __init__(self, url: str, timeout: float = SMTP_TIMEOUT) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError("SMTP URL must look like smtp://host:port or smtps://host:port")
        self.tls = parts.scheme == "smtps"
        query = parse_qs(parts.query)
        self.starttls = query.get("starttls", ["false"])[-1].lower() in ("1", "true", "yes", "on")
        if self.tls and self.starttls:
            raise ValueError("smtps:// already uses TLS; do not add starttls=true")
        self.host = parts.hostname
        self.port = parts.port or (465 if self.tls else 25)
        self.username = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None
        self.timeout = timeout

    def __repr__(self) -> str:  # never shows the password
        scheme = "smtps" if self.tls else "smtp"
        return f"SmtpTransport({scheme}://{self.host}:{self.port}, starttls={self.starttls})"

    def deliver(self, msg: EmailMessage) -> None:
        context = ssl.create_default_context()
        try:
            if self.tls:
                client: smtplib.SMTP = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=context)
            else:
                client = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            with client:
                if self.starttls:
                    client.starttls(context=context)
                    client.ehlo()
                if self.username:
                    client.login(self.username, self._password or "")
                client.send_message(msg)
        except (smtplib.SMTPException, OSError) as exc:
            raise MailError(f"SMTP delivery via {self.host}:{self.port} failed ({type(exc).__name__})") from None


class OutboxTransport:
    """Writes each message as one ``.eml`` file (name sortable by time) into a directory; for demos and tests."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def __repr__(self) -> str:
        return f"OutboxTransport({str(self.directory)!r})"

    def deliver(self, msg: EmailMessage) -> Path:
        try:
            return write_message(self.directory, ".eml", msg.as_bytes())
        except OSError as exc:
            raise MailError(f"cannot write to the outbox {self.directory} ({type(exc).__name__})") from None


class Mailer:
    """Renders ``templates/email/{template}.txt`` and ``.html`` and sends them as one message."""

    def __init__(self, transport: Transport, mail_from: str, templates_dir: str | os.PathLike[str] = TEMPLATES_DIR):
        self.transport = transport
        self.mail_from = mail_from
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(templates_dir)),
            autoescape=jinja2.select_autoescape(enabled_extensions=("html",), disabled_extensions=("txt",),
                                                default=True),
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )

    def render(self, template: str, context: dict[str, Any]) -> tuple[str, str]:
        """The (text, html) bodies of ``template`` with ``context``."""
        if not _TEMPLATE_NAME.match(template or ""):
            raise MailError(f"invalid mail template name {template!r}")
        try:
            text = self.env.get_template(f"email/{template}.txt").render(context)
            html = self.env.get_template(f"email/{template}.html").render(context)
        except jinja2.TemplateError as exc:
            raise MailError(f"cannot render mail template {template!r} ({type(exc).__name__}: {exc.message})") \
                from None
        return text, html

    def build(self, to: str, subject: str, template: str, context: dict[str, Any]) -> EmailMessage:
        """The multipart/alternative message (text first, HTML preferred)."""
        for name, value in (("to", to), ("subject", subject)):
            if not value or "\r" in value or "\n" in value:
                raise MailError(f"invalid mail {name}")
        text, html = self.render(template, context)
        msg = EmailMessage()
        msg["From"] = self.mail_from
        msg["To"] = to
        msg["Subject"] = subject
        msg["Date"] = email.utils.formatdate(usegmt=True)
        domain = email.utils.parseaddr(self.mail_from)[1].rpartition("@")[2] or None
        msg["Message-ID"] = email.utils.make_msgid(domain=domain)
        msg["Auto-Submitted"] = "auto-generated"
        msg.set_content(text)
        msg.add_alternative(html, subtype="html")
        return msg

    def send(self, to: str, subject: str, template: str, context: dict[str, Any]) -> None:
        """Render and deliver; raises ``MailError`` if either fails."""
        msg = self.build(to, subject, template, context)
        self.transport.deliver(msg)
        log.info("mail sent", extra={"template": template, "message_id": msg["Message-ID"]})


def make_mailer(settings: Any) -> Mailer:
    """SMTP when ``settings.smtp_url`` is set, otherwise the outbox directory."""
    transport: Transport
    if settings.smtp_url:
        transport = SmtpTransport(settings.smtp_url)
    else:
        transport = OutboxTransport(settings.outbox_dir)
    return Mailer(transport, settings.mail_from)
