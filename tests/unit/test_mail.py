"""Mail: templates, a real in-process SMTP server, the outbox, failures."""

from __future__ import annotations

import email
import email.policy
import logging
import os
import stat
import time

import pytest

from config.settings import Settings
from idp.mail import Mailer, MailError, OutboxTransport, SmtpTransport, make_mailer

try:  # tests/ is on sys.path when tests/ is not a package
    from helpers.smtp import SmtpSink, free_port
except ImportError:  # tests/ is a package
    from tests.helpers.smtp import SmtpSink, free_port

FROM = "idhub <no-reply@idhub.test>"
RESET_URL = "https://hub.example/w/acme/password/reset/AbC123-secret_token"
NOT_ME_URL = "https://hub.example/w/acme/security/not-me/sig.ned-token"
SECURITY_URL = "https://hub.example/w/acme/settings/security"
ALERT_CTX = {
    "workspace_name": "Acme Corp",
    "user_name": "Alice Example",
    "user_email": "alice@acme.test",
    "when": "01 Mar 2025, 12:00 UTC",
    "ip": "81.2.69.142",
    "location": "London, United Kingdom",
    "device": "Chrome 126 on Linux",
    "security_url": SECURITY_URL,
    "wasnt_me_url": NOT_ME_URL,
}
RESET_CTX = {"workspace_name": "Acme Corp", "user_name": "Alice Example", "reset_url": RESET_URL,
             "expires_hours": 24}
ALERTS = {
    "alert_new_device": {},
    "alert_new_location": {},
    "alert_password_changed": {},
    "alert_failed_signins": {"attempts": 15},
    "alert_mfa_changed": {"change": "authenticator app removed"},
}


def parts(msg: email.message.EmailMessage) -> dict[str, str]:
    return {p.get_content_type(): p.get_content() for p in msg.walk() if p.get_content_maintype() == "text"}


@pytest.fixture
def sink():
    with SmtpSink() as s:
        yield s


def test_smtp_delivers_multipart_alternative(sink):
    mailer = Mailer(SmtpTransport(sink.url), FROM)
    mailer.send("alice@acme.test", "Reset your password", "password_reset", RESET_CTX)
    msg = sink.wait_for(to="alice@acme.test", subject_contains="Reset your password")
    assert msg.get_content_type() == "multipart/alternative"
    body = parts(msg)
    assert set(body) == {"text/plain", "text/html"}
    assert RESET_URL in body["text/plain"] and RESET_URL in body["text/html"]
    assert "24 hours" in body["text/plain"] and "<a href=\"" + RESET_URL in body["text/html"]
    assert msg["From"] == FROM and msg["To"] == "alice@acme.test"
    assert msg["Message-ID"].startswith("<") and msg["Message-ID"].endswith("@idhub.test>")
    assert email.utils.parsedate_to_datetime(msg["Date"]).tzinfo is not None
    assert sink.messages[0].mail_from == "no-reply@idhub.test"


def test_html_is_escaped_and_text_is_not(sink):
    mailer = Mailer(SmtpTransport(sink.url), FROM)
    ctx = dict(RESET_CTX, user_name="<script>alert(1)</script>", workspace_name="R&D \"Team\"")
    mailer.send("alice@acme.test", "Reset your password", "password_reset", ctx)
    body = parts(sink.wait_for(to="alice@acme.test"))
    assert "<script>" not in body["text/html"] and "&lt;script&gt;" in body["text/html"]
    assert "R&amp;D" in body["text/html"]
    assert "<script>alert(1)</script>" in body["text/plain"] and "R&D \"Team\"" in body["text/plain"]


@pytest.mark.parametrize("template", sorted(ALERTS))
def test_every_alert_says_what_when_where_and_has_the_links(template):
    mailer = Mailer(OutboxTransport("/nonexistent"), FROM)
    text, html = mailer.render(template, dict(ALERT_CTX, **ALERTS[template]))
    for body in (text, html):
        assert NOT_ME_URL in body and SECURITY_URL in body
        for value in ("01 Mar 2025, 12:00 UTC", "81.2.69.142", "London, United Kingdom", "Chrome 126 on Linux",
                      "alice@acme.test", "Alice Example", "Acme Corp"):
            assert value in body, (template, value)
        for value in ALERTS[template].values():
            assert str(value) in body
    assert "This wasn't me" in text and "This wasn&#39;t me" in html
    assert f'href="{NOT_ME_URL}"' in html and f'href="{SECURITY_URL}"' in html
    assert "choose a new password" in text  # says what "This wasn't me" does


def test_account_secured_mail():
    mailer = Mailer(OutboxTransport("/nonexistent"), FROM)
    text, html = mailer.render("account_secured", RESET_CTX)
    for body in (text, html):
        assert RESET_URL in body and "signed out every session" in body


def test_missing_context_is_an_error():
    mailer = Mailer(OutboxTransport("/nonexistent"), FROM)
    with pytest.raises(MailError):
        mailer.render("password_reset", {"workspace_name": "Acme"})


@pytest.mark.parametrize("name", ["../../etc/passwd", "email/password_reset", "nope", "", "Password_Reset"])
def test_bad_template_names_are_refused(name):
    with pytest.raises(MailError):
        Mailer(OutboxTransport("/nonexistent"), FROM).render(name, RESET_CTX)


@pytest.mark.parametrize("to,subject", [("a@b.test\r\nBcc: x@evil.test", "Hi"), ("a@b.test", "Hi\nBcc: x@e.test"),
                                        ("", "Hi")])
def test_header_injection_is_refused(tmp_path, to, subject):
    with pytest.raises(MailError):
        Mailer(OutboxTransport(tmp_path), FROM).send(to, subject, "password_reset", RESET_CTX)
    assert not list(tmp_path.iterdir())


def test_outbox_writes_one_parseable_eml_per_message(tmp_path):
    outbox = tmp_path / "outbox"
    mailer = Mailer(OutboxTransport(outbox), FROM)
    mailer.send("alice@acme.test", "Reset your password", "password_reset", RESET_CTX)
    time.sleep(0.001)
    mailer.send("bob@acme.test", "Your password was changed", "alert_password_changed", ALERT_CTX)
    files = sorted(outbox.iterdir())
    assert [f.suffix for f in files] == [".eml", ".eml"]
    assert not [f for f in files if f.name.startswith(".")]  # no temp files left behind
    first = email.message_from_bytes(files[0].read_bytes(), policy=email.policy.default)
    second = email.message_from_bytes(files[1].read_bytes(), policy=email.policy.default)
    assert first["To"] == "alice@acme.test" and second["To"] == "bob@acme.test"  # names sort by time
    assert first.get_content_type() == "multipart/alternative"
    assert all(RESET_URL in b for b in parts(first).values())
    assert stat.S_IMODE(os.stat(files[0]).st_mode) == 0o600  # reset links are not world-readable


def test_outbox_failure_is_a_mail_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(MailError):
        Mailer(OutboxTransport(blocker / "outbox"), FROM).send("a@acme.test", "Hi", "password_reset", RESET_CTX)


def test_unreachable_smtp_server_raises_mail_error(caplog):
    caplog.set_level(logging.DEBUG)
    mailer = Mailer(SmtpTransport(f"smtp://127.0.0.1:{free_port()}"), FROM)
    started = time.monotonic()
    with pytest.raises(MailError) as info:
        mailer.send("alice@acme.test", "Reset your password", "password_reset", RESET_CTX)
    assert time.monotonic() - started < 10
    assert RESET_URL not in str(info.value) and info.value.__cause__ is None
    assert not any(RESET_URL in str(r.__dict__) for r in caplog.records)


def test_bodies_are_never_logged(sink, caplog):
    caplog.set_level(logging.DEBUG)
    Mailer(SmtpTransport(sink.url), FROM).send("alice@acme.test", "Reset", "password_reset", RESET_CTX)
    sink.wait_for(to="alice@acme.test")
    ours = [r for r in caplog.records if r.name.startswith("idhub")]  # "mail.log" is the test server's
    assert ours, "the mailer logs that it sent something"
    assert not any("AbC123-secret_token" in str(r.__dict__) for r in ours)


def test_smtp_url_parsing():
    t = SmtpTransport("smtp://user%40acme.test:p%40ss@mail.acme.test:587?starttls=true")
    assert (t.host, t.port, t.username, t.starttls, t.tls) == ("mail.acme.test", 587, "user@acme.test", True, False)
    assert "p@ss" not in repr(t) and "p%40ss" not in repr(t)
    t = SmtpTransport("smtps://mail.acme.test")
    assert (t.port, t.tls, t.starttls, t.timeout) == (465, True, False, 10.0)
    assert SmtpTransport("smtp://mail.acme.test").port == 25
    for bad in ("http://mail.acme.test", "smtp://", "smtps://mail.acme.test?starttls=true"):
        with pytest.raises(ValueError):
            SmtpTransport(bad)


def test_make_mailer_picks_the_transport(tmp_path):
    base = Settings(secret_key="x" * 40, outbox_dir=str(tmp_path), mail_from=FROM)
    mailer = make_mailer(base)
    assert isinstance(mailer.transport, OutboxTransport) and mailer.transport.directory == tmp_path
    assert mailer.mail_from == FROM
    mailer = make_mailer(base.with_(smtp_url="smtp://127.0.0.1:2525"))
    assert isinstance(mailer.transport, SmtpTransport) and mailer.transport.port == 2525
