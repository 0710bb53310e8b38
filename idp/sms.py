"""Outgoing text messages: a JSON webhook (``IDHUB_SMS_WEBHOOK_URL``) or the outbox directory.

Plain Python, no Flask. Messages carry one-time codes: they never appear in logs or exception texts.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from idp.outbox import write_message

log = logging.getLogger("idhub.sms")

WEBHOOK_TIMEOUT = 10.0
_MAX_RESPONSE = 64 * 1024


class SmsError(RuntimeError):
    """A text message could not be delivered. The text never contains the message or the number."""


class SmsSender(Protocol):
    def send(self, to: str, message: str) -> None: ...


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse every redirect: the message would otherwise be re-sent to wherever the gateway points."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: PLR0913 - urllib's signature
        return None  # urllib then raises HTTPError with the 3xx status


class WebhookSms:
    """POSTs ``{"to": "+15550100", "message": "…"}`` as JSON; any answer but 2xx is an ``SmsError``."""

    def __init__(self, url: str, timeout: float = WEBHOOK_TIMEOUT) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("the SMS webhook must be an http:// or https:// URL")
        self.url = url
        self.host = parts.hostname
        self.timeout = timeout
        self._opener = urllib.request.build_opener(_NoRedirect())

    def __repr__(self) -> str:  # the URL may carry a token: show the host only
        return f"WebhookSms({self.host})"

    def send(self, to: str, message: str) -> None:
        body = json.dumps({"to": to, "message": message}).encode()
        req = urllib.request.Request(  # noqa: S310 - scheme checked in __init__
            self.url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json; charset=utf-8", "User-Agent": "idhub-sms/1"},
        )
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                status = resp.status
                resp.read(_MAX_RESPONSE)
        except urllib.error.HTTPError as exc:
            exc.close()
            raise SmsError(f"SMS webhook at {self.host} answered HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise SmsError(f"SMS webhook at {self.host} failed ({type(exc).__name__})") from None
        if not 200 <= status < 300:
            raise SmsError(f"SMS webhook at {self.host} answered HTTP {status}")
        log.info("sms sent", extra={"transport": "webhook"})


class OutboxSms:
    """Writes each message as one ``*.sms.json`` file (mode 0600, atomic rename) into a directory."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def __repr__(self) -> str:
        return f"OutboxSms({str(self.directory)!r})"

    def send(self, to: str, message: str) -> Path:
        data = json.dumps({"to": to, "message": message}).encode()
        try:
            return write_message(self.directory, ".sms.json", data)
        except OSError as exc:
            raise SmsError(f"cannot write to the outbox {self.directory} ({type(exc).__name__})") from None


def make_sms_sender(settings: Any) -> WebhookSms | OutboxSms:
    """The webhook when ``settings.sms_webhook_url`` is set, otherwise the outbox directory."""
    url = getattr(settings, "sms_webhook_url", None)
    if url:
        return WebhookSms(url)
    return OutboxSms(settings.outbox_dir)
