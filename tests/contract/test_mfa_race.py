"""Single use under concurrency, on PostgreSQL and SQLite: of 16 parallel redemptions of one backup code, or
submissions of one TOTP code, exactly one succeeds (each is a single conditional UPDATE)."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

import pyotp
import pytest

import idp.mfa.models  # noqa: F401 - registers the tables before create_all
from idp.db import Base, make_engine, make_sessionmaker
from idp.mfa import MfaService, SecretBox
from idp.mfa.models import MfaTotp
from idp.models import User, Workspace
from idp.storage.sql import SqlOneTimeStore, SqlThrottleStore
from tests.helpers.concurrency import parallel
from tests.services import drop_postgres, postgres_url

THREADS = 16
NOW = datetime(2030, 1, 1, 12, 0, 10, tzinfo=UTC)




@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def sm(request, tmp_path_factory):
    if request.param == "postgres":
        url = postgres_url()
    else:
        url = f"sqlite:///{tmp_path_factory.mktemp('mfa-race') / 'race.db'}"
    engine = make_engine(url)
    try:
        Base.metadata.create_all(engine)
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()
        if request.param == "postgres":
            drop_postgres(url)


class Texts:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def send(self, to: str, message: str) -> None:
        self.sent.append(message)


@pytest.fixture
def texts():
    return Texts()


@pytest.fixture
def svc(sm, texts):
    return MfaService(
        sm, SecretBox("m" * 48, "totp"), SqlOneTimeStore(sm), SqlThrottleStore(sm), texts, "h" * 48, clock=lambda: NOW
    )


@pytest.fixture
def user(sm):
    ws_id, user_id = str(uuid.uuid4()), str(uuid.uuid4())
    with sm() as s, s.begin():
        s.add(Workspace(id=ws_id, slug="ws-" + ws_id[:8], name="Race"))
        s.flush()
        email = f"{user_id[:8]}@example.test"
        s.add(User(id=user_id, workspace_id=ws_id, email=email, email_normalized=email))
    return user_id


def test_backup_code_redeemed_once(svc, user):
    code = svc.backup_generate(user)[3]
    results = parallel(THREADS, lambda: svc.verify(user, "backup_codes", code))
    assert results.count(True) == 1
    assert svc.backup_remaining(user) == 9


def test_totp_code_accepted_once(svc, user, sm):
    setup = svc.totp_begin(user, "race@example.test")
    step = int(NOW.timestamp()) // 30
    assert svc.totp_confirm(user, pyotp.TOTP(setup.secret).generate_otp(step - 1))
    code = pyotp.TOTP(setup.secret).generate_otp(step)
    results = parallel(THREADS, lambda: svc.verify(user, "totp", code))
    assert results.count(True) == 1
    with sm() as s:
        assert s.get(MfaTotp, user).last_step == step


def test_sms_code_accepted_once(svc, user, texts):
    assert svc.sms_begin(user, "+1 201 555 0123", client_ip="192.0.2.1").ok
    assert svc.sms_confirm(user, re.search(r"code is (\d{6})", texts.sent[-1]).group(1))
    assert svc.sms_send_signin_code(user, "flow-1", client_ip="192.0.2.1").ok
    code = re.search(r"code is (\d{6})", texts.sent[-1]).group(1)
    results = parallel(THREADS, lambda: svc.verify(user, "sms", code, binding="flow-1"))
    assert results.count(True) == 1
