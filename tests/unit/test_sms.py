"""Outgoing text messages (idp.sms): the JSON webhook against a real local HTTP server, and the outbox."""

from __future__ import annotations

import json
import os
import re
import stat
import threading
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import idp.mfa.models  # noqa: F401 - registers the tables before create_all
from idp.db import Base, make_engine, make_sessionmaker
from idp.mfa import MfaService, SecretBox, SendResult
from idp.models import User, Workspace
from idp.sms import OutboxSms, SmsError, WebhookSms, make_sms_sender
from idp.storage.memory import MemoryOneTimeStore, MemoryThrottleStore
from tests.services import free_port

MESSAGE = "Your idhub code is 123456. It expires in 10 minutes. Don't share it with anyone."


class Gateway:
    """A real HTTP server on 127.0.0.1 that records every request and answers with ``status``."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.status = 200
        self.location: str | None = None
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                gateway.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "json": json.loads(body or b"null")}
                )
                self.send_response(gateway.status)
                if gateway.location:
                    self.send_header("Location", gateway.location)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def gateway():
    g = Gateway()
    yield g
    g.close()


def test_webhook_posts_json(gateway):
    WebhookSms(gateway.url + "/sms?token=t0ps3cret").send("+15550100", MESSAGE)
    assert len(gateway.requests) == 1
    req = gateway.requests[0]
    assert req["path"] == "/sms?token=t0ps3cret"
    assert req["json"] == {"to": "+15550100", "message": MESSAGE}
    assert req["headers"]["Content-Type"].startswith("application/json")


@pytest.mark.parametrize("status", [400, 401, 404, 500, 503])
def test_webhook_non_2xx_is_an_error_without_the_message(gateway, status):
    gateway.status = status
    with pytest.raises(SmsError) as err:
        WebhookSms(gateway.url + "/sms?token=t0ps3cret").send("+15550100", MESSAGE)
    text = str(err.value)
    assert str(status) in text
    assert "123456" not in text and "+15550100" not in text and "t0ps3cret" not in text


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_webhook_refuses_redirects(status):
    target, origin = Gateway(), Gateway()
    try:
        origin.status, origin.location = status, target.url + "/stolen"
        with pytest.raises(SmsError):
            WebhookSms(origin.url + "/sms").send("+15550100", MESSAGE)
        assert len(origin.requests) == 1
        assert target.requests == []  # the message never went where the redirect pointed
    finally:
        target.close()
        origin.close()


def test_webhook_unreachable_is_an_error():
    with pytest.raises(SmsError) as err:
        WebhookSms(f"http://127.0.0.1:{free_port()}/sms", timeout=2).send("+15550100", MESSAGE)
    assert "123456" not in str(err.value)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.test/x", "not a url", "http://"])
def test_webhook_needs_an_http_url(url):
    with pytest.raises(ValueError):
        WebhookSms(url)


def test_webhook_repr_hides_the_url_token():
    assert "secret" not in repr(WebhookSms("https://user:secret@sms.example.test/hook?token=secret"))


def test_outbox_writes_one_private_json_file_per_message(tmp_path):
    box = OutboxSms(tmp_path / "outbox")
    first = box.send("+15550100", MESSAGE)
    box.send("+15550101", "second")
    files = sorted((tmp_path / "outbox").iterdir())
    assert [f.name.endswith(".sms.json") for f in files] == [True, True]  # no temporary files left
    assert files[0] == first
    assert json.loads(first.read_text()) == {"to": "+15550100", "message": MESSAGE}
    assert stat.S_IMODE(os.stat(first).st_mode) == 0o600


def test_outbox_unwritable_is_an_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SmsError) as err:
        OutboxSms(blocker / "outbox").send("+15550100", MESSAGE)
    assert "123456" not in str(err.value)


@dataclass
class FakeSettings:
    outbox_dir: str
    sms_webhook_url: str | None = None


def test_make_sms_sender(tmp_path):
    assert isinstance(make_sms_sender(FakeSettings(str(tmp_path))), OutboxSms)
    sender = make_sms_sender(FakeSettings(str(tmp_path), "https://sms.example.test/hook"))
    assert isinstance(sender, WebhookSms) and sender.url == "https://sms.example.test/hook"


# --- with the service --------------------------------------------------------------------------------


@pytest.fixture
def service_for(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path}/sms.db")
    Base.metadata.create_all(engine)
    sm = make_sessionmaker(engine)
    ws_id, user_id = str(uuid.uuid4()), str(uuid.uuid4())
    with sm() as s, s.begin():
        s.add(Workspace(id=ws_id, slug="ws", name="Test"))
        s.flush()
        s.add(User(id=user_id, workspace_id=ws_id, email="a@example.test", email_normalized="a@example.test"))

    def make(sender):
        svc = MfaService(
            sm,
            SecretBox("m" * 48, "totp"),
            MemoryOneTimeStore(),
            MemoryThrottleStore(),
            sender,
            "h" * 48,
            issuer="Acme ID",
        )
        return svc, user_id

    yield make
    engine.dispose()


def test_service_texts_through_the_webhook(service_for, gateway):
    svc, user = service_for(WebhookSms(gateway.url + "/sms"))
    assert svc.sms_begin(user, "+1 201 555 0123", client_ip="192.0.2.1") == SendResult(True)
    sent = gateway.requests[-1]["json"]
    assert sent["to"] == "+12015550123"
    code = re.fullmatch(
        r"Your Acme ID code is (\d{6})\. It expires in 10 minutes\. Don't share it with anyone\.", sent["message"]
    ).group(1)
    assert svc.sms_confirm(user, code)


def test_service_reports_a_failing_gateway(service_for, gateway):
    gateway.status = 502
    svc, user = service_for(WebhookSms(gateway.url + "/sms"))
    r = svc.sms_begin(user, "+1 201 555 0123", client_ip="192.0.2.1")
    assert r == SendResult(False, "We could not send a text message right now. Try again or use another method.")
    assert not svc.enrolled(user).sms


def test_service_texts_into_the_outbox(service_for, tmp_path):
    svc, user = service_for(OutboxSms(tmp_path / "outbox"))
    assert svc.sms_begin(user, "+1 201 555 0123", client_ip="192.0.2.1").ok
    (f,) = (tmp_path / "outbox").glob("*.sms.json")
    msg = json.loads(f.read_text())
    assert msg["to"] == "+12015550123"
    assert svc.sms_confirm(user, re.search(r"code is (\d{6})", msg["message"]).group(1))
