"""Second factors (idp.mfa): encryption at rest, TOTP replay and drift, SMS codes, backup codes, throttling."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import uuid
from datetime import UTC, datetime, timedelta

import pyotp
import pytest
from sqlalchemy import select, text

import idp.mfa.models  # noqa: F401 - registers the tables before create_all
from idp.db import Base, make_engine, make_sessionmaker
from idp.mfa import service as mfa_service
from idp.mfa.crypto import SecretBox
from idp.mfa.models import BackupCode, MfaPhone, MfaTotp
from idp.mfa.service import Enrolled, MfaError, MfaService, SendResult
from idp.models import User, Workspace
from idp.storage.memory import MemoryOneTimeStore, MemoryThrottleStore

MASTER = "m" * 48
HMAC_KEY = "h" * 48
PHONE = "+12015550123"
PHONE_2 = "+16502530000"
T0 = datetime(2030, 1, 1, 12, 0, 10, tzinfo=UTC)  # 10 s into a 30-second step


class Clock:
    def __init__(self, t: datetime = T0) -> None:
        self.t = t

    def __call__(self) -> datetime:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += timedelta(seconds=seconds)


class FakeSms:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []
        self.fail = False

    def send(self, to: str, message: str) -> None:
        if self.fail:
            raise RuntimeError("gateway down")
        self.sent.append((to, message))

    def last_code(self) -> str:
        m = re.search(r"code is (\d{6})\.", self.sent[-1][1])
        assert m, self.sent[-1][1]
        return m.group(1)


@pytest.fixture
def sm(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path}/mfa.db")
    Base.metadata.create_all(engine)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def sms():
    return FakeSms()


@pytest.fixture
def one_time():
    return MemoryOneTimeStore()


@pytest.fixture
def throttle():
    return MemoryThrottleStore()


@pytest.fixture
def svc(sm, one_time, throttle, sms, clock):
    return MfaService(sm, SecretBox(MASTER, "totp"), one_time, throttle, sms, HMAC_KEY, clock=clock, issuer="idhub")


def new_user(sm) -> str:
    ws_id, user_id = str(uuid.uuid4()), str(uuid.uuid4())
    with sm() as s, s.begin():
        s.add(Workspace(id=ws_id, slug="ws-" + ws_id[:8], name="Test"))
        s.flush()
        email = f"{user_id[:8]}@example.test"
        s.add(User(id=user_id, workspace_id=ws_id, email=email, email_normalized=email))
    return user_id


@pytest.fixture
def user(sm):
    return new_user(sm)


def code_at(secret: str, t: datetime, steps: int = 0) -> str:
    return pyotp.TOTP(secret).at(t + timedelta(seconds=30 * steps))


def other(code: str) -> str:
    """A six-digit code that is not ``code``."""
    return f"{(int(code) + 1) % 10**6:06d}"


def enrol_totp(svc, user, clock) -> str:
    setup = svc.totp_begin(user, "alice@acme.test")
    assert svc.totp_confirm(user, code_at(setup.secret, clock()))
    clock.advance(30)  # the confirming step is used up
    return setup.secret


def enrol_sms(svc, sms, user, phone=PHONE) -> None:
    assert svc.sms_begin(user, phone, client_ip="192.0.2.1").ok
    assert svc.sms_confirm(user, sms.last_code())


# --- SecretBox ---------------------------------------------------------------------------------------


def test_secretbox_round_trip_with_fresh_nonces():
    box = SecretBox(MASTER, "totp")
    a, b = box.encrypt("JBSWY3DPEHPK3PXP"), box.encrypt("JBSWY3DPEHPK3PXP")
    assert a.startswith("v1:") and b.startswith("v1:")
    assert a != b  # random nonce
    assert "JBSWY3DPEHPK3PXP" not in a
    assert box.decrypt(a) == box.decrypt(b) == "JBSWY3DPEHPK3PXP"


def test_secretbox_rejects_tampering_wrong_key_wrong_purpose_and_unknown_version():
    box = SecretBox(MASTER, "totp")
    token = box.encrypt("JBSWY3DPEHPK3PXP")
    body = bytearray(token[3:].encode())
    body[20] = ord("A") if body[20] != ord("A") else ord("B")
    bad = [
        "v1:" + body.decode(),
        "v2:" + token[3:],
        token[3:],
        "v1:%%%",
        "v1:" + token[3:10],
        "",
    ]
    for t in bad:
        with pytest.raises(ValueError) as err:
            box.decrypt(t)
        assert "JBSWY3DPEHPK3PXP" not in str(err.value)
    with pytest.raises(ValueError):
        SecretBox("x" * 48, "totp").decrypt(token)
    with pytest.raises(ValueError):
        SecretBox(MASTER, "other").decrypt(token)  # the purpose is the associated data and in the key
    with pytest.raises(ValueError):
        SecretBox("", "totp")
    assert MASTER not in repr(box)


# --- authenticator app -------------------------------------------------------------------------------


def test_totp_setup_has_a_160_bit_secret_uri_and_inline_svg(svc, user):
    setup = svc.totp_begin(user, "alice@acme.test")
    assert re.fullmatch(r"[A-Z2-7]{32}", setup.secret)  # 32 base32 chars = 160 bits
    assert setup.uri.startswith("otpauth://totp/")
    assert "issuer=idhub" in setup.uri and "alice%40acme.test" in setup.uri
    assert f"secret={setup.secret}" in setup.uri
    assert setup.qr_svg.startswith("<svg") and "<?xml" not in setup.qr_svg
    assert setup.secret not in repr(setup)
    assert svc.totp_begin(user, "alice@acme.test").secret != setup.secret


def test_totp_not_active_until_confirmed_and_confirm_checks_the_pending_secret(svc, user, clock):
    setup = svc.totp_begin(user, "alice@acme.test")
    assert not svc.enrolled(user).totp
    assert not svc.totp_verify(user, code_at(setup.secret, clock()))  # pending secrets do not sign in
    assert not svc.totp_confirm(user, "000000" if code_at(setup.secret, clock()) != "000000" else "111111")
    assert not svc.totp_confirm(user, "abc")
    assert svc.totp_confirm(user, code_at(setup.secret, clock()))
    assert svc.enrolled(user).totp
    with svc.sm() as s:
        row = s.get(MfaTotp, user)
        assert row.pending_secret_enc is None and row.confirmed_at is not None
        assert row.last_step == int(clock().timestamp()) // 30
    # the code used to confirm cannot sign in (last_step was set)
    assert not svc.totp_verify(user, code_at(setup.secret, clock()))


def test_totp_secret_is_stored_only_encrypted(svc, user, clock, sm):
    setup = svc.totp_begin(user, "alice@acme.test")
    with sm() as s:
        pending = s.execute(text("SELECT pending_secret_enc FROM mfa_totp WHERE user_id = :u"), {"u": user}).one()
    assert setup.secret not in str(pending) and pending[0].startswith("v1:")
    svc.totp_confirm(user, code_at(setup.secret, clock()))
    with sm() as s:
        row = s.execute(text("SELECT * FROM mfa_totp WHERE user_id = :u"), {"u": user}).one()
    dump = "|".join(str(v) for v in row)
    assert setup.secret not in dump and setup.secret.lower() not in dump.lower()
    assert SecretBox(MASTER, "totp").decrypt(row._mapping["secret_enc"]) == setup.secret


def test_totp_code_passes_once_replay_fails(svc, user, clock):
    secret = enrol_totp(svc, user, clock)
    code = code_at(secret, clock())
    assert svc.totp_verify(user, code)
    assert not svc.totp_verify(user, code)  # same code, same step
    clock.advance(20)  # still within the drift window of that step
    assert not svc.totp_verify(user, code)


def test_totp_older_step_after_newer_fails(svc, user, clock):
    secret = enrol_totp(svc, user, clock)
    older, newer = code_at(secret, clock(), -1), code_at(secret, clock())
    if older == newer:  # pragma: no cover - one in a million
        pytest.skip("the two steps happen to share a code")
    assert svc.totp_verify(user, newer)
    assert not svc.totp_verify(user, older)


def test_totp_drift_of_one_step_passes_two_steps_fail(svc, user, clock):
    secret = enrol_totp(svc, user, clock)
    clock.advance(60)  # well past the step used to confirm
    now_code = code_at(secret, clock())
    for steps in (-2, 2):
        c = code_at(secret, clock(), steps)
        if c != now_code and c not in (code_at(secret, clock(), -1), code_at(secret, clock(), 1)):
            assert not svc.totp_verify(user, c), steps
    assert svc.totp_verify(user, code_at(secret, clock(), -1))  # one step late
    assert svc.totp_verify(user, code_at(secret, clock(), 1))  # one step early
    clock.advance(60)
    assert svc.totp_verify(user, code_at(secret, clock()))


def test_totp_codes_with_spaces_are_accepted_and_junk_is_not(svc, user, clock):
    secret = enrol_totp(svc, user, clock)
    code = code_at(secret, clock())
    assert not svc.totp_verify(user, code + "0")
    assert not svc.totp_verify(user, "x" * 10_000)
    assert not svc.totp_verify(user, None)
    assert svc.totp_verify(user, f" {code[:3]} {code[3:]} ")


def test_totp_reenrolment_keeps_the_old_secret_until_confirmed(svc, user, clock):
    old = enrol_totp(svc, user, clock)
    new = svc.totp_begin(user, "alice@acme.test").secret
    assert svc.enrolled(user).totp
    assert svc.totp_verify(user, code_at(old, clock()))
    clock.advance(30)
    assert svc.totp_confirm(user, code_at(new, clock()))
    clock.advance(30)
    assert not svc.totp_verify(user, code_at(old, clock()))
    assert svc.totp_verify(user, code_at(new, clock()))


def test_totp_pending_returns_the_same_setup_until_confirmed(svc, user, clock):
    assert svc.totp_pending(user, "alice@acme.test") is None
    setup = svc.totp_begin(user, "alice@acme.test")
    again = svc.totp_pending(user, "alice@acme.test")
    assert again == setup
    assert svc.totp_confirm(user, code_at(setup.secret, clock()))
    assert svc.totp_pending(user, "alice@acme.test") is None


def test_totp_remove(svc, user, clock):
    secret = enrol_totp(svc, user, clock)
    svc.totp_remove(user)
    assert not svc.enrolled(user).totp
    assert not svc.totp_verify(user, code_at(secret, clock()))


# --- account-wide verification throttle --------------------------------------------------------------


def test_wrong_codes_block_the_account_and_success_resets(svc, user, clock, throttle):
    secret = enrol_totp(svc, user, clock)
    wrong = "000000" if code_at(secret, clock()) != "000000" else "111111"
    for _ in range(5):
        assert not svc.verify(user, "totp", wrong)
    assert svc.mfa_retry_after(user) == 0  # five free failures
    assert not svc.verify(user, "totp", wrong)
    assert svc.mfa_retry_after(user) == 2
    # while blocked, even the right code is refused without being checked (last_step does not move)
    assert not svc.verify(user, "totp", code_at(secret, clock()))
    with svc.sm() as s:
        before = s.get(MfaTotp, user).last_step
    assert before < int(clock().timestamp()) // 30
    clock.advance(2)
    assert svc.mfa_retry_after(user) == 0
    assert svc.verify(user, "totp", code_at(secret, clock()))
    assert throttle.state(f"mfa:{user}", clock()).failures == 0


def test_throttle_counts_every_method_together_and_blocked_backup_code_is_not_spent(svc, user, clock):
    enrol_totp(svc, user, clock)
    codes = svc.backup_generate(user)
    for method in ("totp", "backup_codes", "totp", "sms", "backup_codes", "totp", "backup_codes"):
        assert not svc.verify(user, method, "999999" if method != "backup_codes" else "zzzzz-zzzzz", binding="f1")
    assert svc.mfa_retry_after(user) > 0
    assert not svc.verify(user, "backup_codes", codes[0])
    assert svc.backup_remaining(user) == 10  # not even looked at
    clock.advance(svc.mfa_retry_after(user))
    assert svc.verify(user, "backup_codes", codes[0])


def test_throttle_is_capped_and_forgotten_after_the_window(svc, user, clock):
    for _ in range(40):
        svc.verify(user, "totp", "123456")
        clock.advance(svc.mfa_retry_after(user))
    svc.verify(user, "totp", "123456")
    assert svc.mfa_retry_after(user) <= 900
    clock.advance(3601)
    assert svc.mfa_retry_after(user) == 0


# --- SMS -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw,expected",
    [("+1 201-555-0123", PHONE), ("(201) 555-0123", PHONE), ("+1.650.253.0000", PHONE_2), ("+12015550123", PHONE)],
)
def test_normalise_phone(svc, raw, expected):
    assert svc.normalise_phone(raw) == expected


@pytest.mark.parametrize("raw", ["", "hello", "+1 555 0100", "12", "+" + "1" * 40, "+1 201 555 0123" + " " * 20])
def test_normalise_phone_rejects(svc, raw):
    with pytest.raises(MfaError) as err:
        svc.normalise_phone(raw)
    assert str(err.value) == "Enter a valid phone number, including the country code."


def test_sms_enrolment(svc, sms, user, one_time):
    assert svc.sms_begin(user, "(201) 555-0123", client_ip="192.0.2.1") == SendResult(True)
    to, message = sms.sent[-1]
    assert to == PHONE
    code = sms.last_code()
    assert message == f"Your idhub code is {code}. It expires in 10 minutes. Don't share it with anyone."
    # stored only as a hash
    assert all(code not in value for value, _exp in one_time._data.values())
    assert not svc.enrolled(user).sms
    with svc.sm() as s:
        assert s.get(MfaPhone, user).pending_phone == PHONE
    assert not svc.sms_confirm(user, other(code))
    assert svc.sms_confirm(user, code)
    e = svc.enrolled(user)
    assert e.sms and e.any and e.phone_masked.endswith("23") and "555" not in e.phone_masked
    with svc.sm() as s:
        row = s.get(MfaPhone, user)
        assert row.phone == PHONE and row.pending_phone is None and row.verified_at is not None


def test_sms_invalid_phone_raises_and_sends_nothing(svc, sms, user):
    with pytest.raises(MfaError):
        svc.sms_begin(user, "not a number", client_ip="192.0.2.1")
    assert sms.sent == []


def test_sms_signin_code_consumed_once_and_bound_to_the_flow(svc, sms, user):
    enrol_sms(svc, sms, user)
    assert svc.sms_send_signin_code(user, "flow-a", client_ip="192.0.2.1").ok
    code = sms.last_code()
    assert not svc.sms_verify_signin_code(user, "flow-b", code)  # another sign-in
    assert not svc.verify(user, "sms", code)  # no binding
    assert svc.verify(user, "sms", code, binding="flow-a")
    assert not svc.verify(user, "sms", code, binding="flow-a")  # consumed


def test_sms_enrolment_code_does_not_sign_in(svc, sms, user):
    enrol_sms(svc, sms, user)
    assert svc.sms_begin(user, PHONE_2, client_ip="192.0.2.1").ok
    assert not svc.sms_verify_signin_code(user, "", sms.last_code())
    assert not svc.sms_verify_signin_code(user, "enrol", sms.last_code())


def test_sms_code_expires_after_ten_minutes(svc, sms, user, clock):
    enrol_sms(svc, sms, user)
    svc.sms_send_signin_code(user, "flow", client_ip="192.0.2.1")
    code = sms.last_code()
    clock.advance(599)
    svc.sms_send_signin_code(user, "flow2", client_ip="192.0.2.1")
    assert svc.sms_verify_signin_code(user, "flow2", sms.last_code())
    clock.advance(2)  # 601 s after the first code
    assert not svc.sms_verify_signin_code(user, "flow", code)


def test_a_new_sms_code_replaces_the_old_one(svc, sms, user):
    enrol_sms(svc, sms, user)
    svc.sms_send_signin_code(user, "flow", client_ip="192.0.2.1")
    first = sms.last_code()
    second = first
    while second == first:
        svc.sms_send_signin_code(user, "flow", client_ip="192.0.2.2")
        second = sms.last_code()
    assert not svc.sms_verify_signin_code(user, "flow", first)
    assert svc.sms_verify_signin_code(user, "flow", second)


def test_sms_code_is_void_after_five_wrong_tries(svc, sms, user, clock):
    enrol_sms(svc, sms, user)
    svc.sms_send_signin_code(user, "flow", client_ip="192.0.2.1")
    code = sms.last_code()
    wrong = other(code)
    for _ in range(4):
        assert not svc.sms_verify_signin_code(user, "flow", wrong)
    assert svc.sms_verify_signin_code(user, "flow", code)  # four wrong tries are fine

    svc.sms_send_signin_code(user, "flow", client_ip="192.0.2.1")
    code = sms.last_code()
    wrong = other(code)
    for _ in range(5):
        assert not svc.sms_verify_signin_code(user, "flow", wrong)
    clock.advance(svc.mfa_retry_after(user))
    assert svc.mfa_retry_after(user) == 0
    assert not svc.sms_verify_signin_code(user, "flow", code)  # the code is void


def test_sms_enrolment_code_is_void_after_five_wrong_tries(svc, sms, user):
    svc.sms_begin(user, PHONE, client_ip="192.0.2.1")
    code = sms.last_code()
    wrong = other(code)
    for _ in range(5):
        assert not svc.sms_confirm(user, wrong)
    assert not svc.sms_confirm(user, code)
    assert not svc.enrolled(user).sms


def test_sms_codes_are_compared_in_constant_time(svc, sms, user, monkeypatch):
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(mfa_service.hmac, "compare_digest", spy)
    enrol_sms(svc, sms, user)
    assert calls


def test_sms_confirm_needs_the_number_the_code_went_to(svc, sms, user, sm):
    svc.sms_begin(user, PHONE, client_ip="192.0.2.1")
    code = sms.last_code()
    with sm() as s, s.begin():  # the pending number changed behind the code's back
        s.get(MfaPhone, user).pending_phone = PHONE_2
    assert not svc.sms_confirm(user, code)
    assert not svc.enrolled(user).sms


def test_sms_send_limit_per_account(svc, sms, user, clock):
    enrol_sms(svc, sms, user)  # one send
    for i in range(4):
        assert svc.sms_send_signin_code(user, f"f{i}", client_ip=f"192.0.2.{i}").ok
    sent = len(sms.sent)
    r = svc.sms_send_signin_code(user, "f9", client_ip="198.51.100.1")
    assert r == SendResult(False, "Too many codes sent. Try again later.", r.retry_after)
    assert 0 < r.retry_after <= 600
    assert len(sms.sent) == sent  # nothing sent
    clock.advance(r.retry_after)
    assert svc.sms_send_signin_code(user, "f10", client_ip="198.51.100.1").ok


def test_sms_send_limit_per_day(svc, sms, user, clock):
    enrol_sms(svc, sms, user)
    sends = 1
    while sends < 20:
        clock.advance(600)
        for _ in range(min(4, 20 - sends)):
            assert svc.sms_send_signin_code(user, "f", client_ip="192.0.2.1").ok
            sends += 1
    clock.advance(600)
    r = svc.sms_send_signin_code(user, "f", client_ip="192.0.2.1")
    assert not r.ok and r.retry_after > 600


def test_sms_send_limit_per_phone_number(svc, sms, sm):
    users = [new_user(sm) for _ in range(6)]
    for u in users[:5]:
        assert svc.sms_begin(u, PHONE, client_ip="192.0.2.1").ok
    r = svc.sms_begin(users[5], PHONE, client_ip="192.0.2.2")
    assert not r.ok and r.error == "Too many codes sent. Try again later."
    assert len(sms.sent) == 5
    assert svc.sms_begin(users[5], PHONE_2, client_ip="192.0.2.2").ok


def test_sms_send_limit_per_client_address(svc, sms, sm):
    users = [new_user(sm) for _ in range(21)]
    for i, u in enumerate(users[:20]):
        phone = f"+1201555{i:04d}"
        assert svc.sms_begin(u, phone, client_ip="203.0.113.7").ok, i
    assert not svc.sms_begin(users[20], "+12015559999", client_ip="203.0.113.7").ok
    assert len(sms.sent) == 20
    assert svc.sms_begin(users[20], "+12015559999", client_ip="203.0.113.8").ok


def test_sms_send_failure(svc, sms, user):
    enrol_sms(svc, sms, user)
    svc.sms_send_signin_code(user, "flow", client_ip="192.0.2.1")
    code = sms.last_code()
    sms.fail = True
    r = svc.sms_send_signin_code(user, "flow", client_ip="192.0.2.1")
    assert r == SendResult(False, "We could not send a text message right now. Try again or use another method.")
    assert svc.sms_verify_signin_code(user, "flow", code)  # the code already delivered still works


def test_sms_signin_without_a_verified_phone(svc, sms, user):
    r = svc.sms_send_signin_code(user, "flow", client_ip="192.0.2.1")
    assert not r.ok and sms.sent == []
    svc.sms_begin(user, PHONE, client_ip="192.0.2.1")  # pending only
    assert not svc.sms_send_signin_code(user, "flow", client_ip="192.0.2.1").ok


def test_sms_remove(svc, sms, user):
    enrol_sms(svc, sms, user)
    svc.sms_send_signin_code(user, "flow", client_ip="192.0.2.1")
    code = sms.last_code()
    svc.sms_remove(user)
    assert not svc.enrolled(user).sms
    assert not svc.sms_verify_signin_code(user, "flow", code)


# --- backup codes ------------------------------------------------------------------------------------


def test_backup_codes_generated(svc, user, sm):
    codes = svc.backup_generate(user)
    assert len(codes) == len(set(codes)) == 10
    for c in codes:
        assert re.fullmatch(r"[23456789abcdefghjkmnpqrstuvwxyz]{5}-[23456789abcdefghjkmnpqrstuvwxyz]{5}", c)
    # >= 40 bits each: 10 symbols of a 31-symbol alphabet
    assert 10 * (31).bit_length() - 10 >= 40
    with sm() as s:
        hashes = set(s.scalars(select(BackupCode.code_hash).where(BackupCode.user_id == user)))
        dump = str(s.execute(text("SELECT * FROM mfa_backup_codes")).all())
    expected = {
        hmac.new(HMAC_KEY.encode(), f"backup\x00{user}\x00{c.replace('-', '')}".encode(), hashlib.sha256).hexdigest()
        for c in codes
    }
    assert hashes == expected
    assert not any(c in dump or c.replace("-", "") in dump for c in codes)
    assert svc.backup_remaining(user) == 10


def test_backup_code_single_use_and_normalised(svc, user):
    codes = svc.backup_generate(user)
    assert svc.backup_verify(user, " " + codes[0].upper().replace("-", " - ") + " ")
    assert not svc.backup_verify(user, codes[0])
    assert svc.backup_remaining(user) == 9
    assert svc.verify(user, "backup_codes", codes[1].replace("-", ""))
    assert svc.backup_remaining(user) == 8
    assert not svc.backup_verify(user, "x" * 10_000)


def test_backup_regenerate_deletes_old_codes(svc, user):
    old = svc.backup_generate(user)
    svc.backup_verify(user, old[0])
    new = svc.backup_generate(user)
    assert svc.backup_remaining(user) == 10
    assert not svc.backup_verify(user, old[1])
    assert svc.backup_verify(user, new[1])


def test_backup_codes_belong_to_one_user(svc, user, sm):
    other = new_user(sm)
    codes = svc.backup_generate(user)
    svc.backup_generate(other)
    assert not svc.backup_verify(other, codes[0])
    assert svc.backup_verify(user, codes[0])


# --- overview, dispatch, removal, logs ---------------------------------------------------------------


def test_enrolled_and_methods(svc, sms, user, clock):
    assert svc.enrolled(user) == Enrolled(False, False, None, 0)
    svc.backup_generate(user)
    e = svc.enrolled(user)
    assert not e.any and e.methods() == ["backup_codes"]  # backup codes alone are not 2FA
    enrol_sms(svc, sms, user)
    assert svc.enrolled(user).methods() == ["sms", "backup_codes"]
    enrol_totp(svc, user, clock)
    e = svc.enrolled(user)
    assert e.any and e.methods() == ["totp", "sms", "backup_codes"]
    assert e.phone_masked == "+1 ••••••••23"


def test_disable_all(svc, sms, user, clock, sm):
    enrol_totp(svc, user, clock)
    enrol_sms(svc, sms, user)
    svc.backup_generate(user)
    svc.disable_all(user)
    assert svc.enrolled(user) == Enrolled(False, False, None, 0)
    with sm() as s:
        assert s.scalar(select(BackupCode.id).where(BackupCode.user_id == user)) is None


def test_verify_unknown_method(svc, user, clock):
    secret = enrol_totp(svc, user, clock)
    assert not svc.verify(user, "email", code_at(secret, clock()))
    assert svc.verify(user, "totp", code_at(secret, clock()))


def test_rows_go_with_the_user(svc, sms, user, clock, sm):
    enrol_totp(svc, user, clock)
    enrol_sms(svc, sms, user)
    svc.backup_generate(user)
    with sm() as s, s.begin():
        s.delete(s.get(User, user))
    assert svc.enrolled(user) == Enrolled(False, False, None, 0)


def test_secrets_never_logged(svc, sms, user, clock, caplog):
    caplog.set_level(logging.DEBUG)
    secret = enrol_totp(svc, user, clock)
    svc.totp_verify(user, code_at(secret, clock()))
    enrol_sms(svc, sms, user)
    sms_code = sms.last_code()
    svc.sms_send_signin_code(user, "flow", client_ip="192.0.2.1")
    sms.fail = True
    svc.sms_send_signin_code(user, "flow", client_ip="192.0.2.1")
    codes = svc.backup_generate(user)
    svc.backup_verify(user, codes[0])
    assert caplog.records
    dump = "\n".join(f"{r.getMessage()} {json.dumps(r.__dict__, default=str)}" for r in caplog.records)
    for s in (secret, sms_code, sms.last_code(), PHONE, *codes, codes[0].replace("-", "")):
        assert s not in dump


def test_sms_code_keys_separate_purpose_user_and_binding(svc):
    keys = {
        svc._code_key("enrol", "u1", "f"),
        svc._code_key("signin", "u1", "f"),
        svc._code_key("signin", "u2", "f"),
        svc._code_key("signin", "u1", "g"),
        svc._code_key("signin", "u1\x00f", ""),
    }
    assert len(keys) == 5


def test_sms_tries_are_counted_even_if_the_void_code_lingers(svc, sms, user, one_time):
    """Parallel guesses can see the code before a fifth wrong try deletes it: the try counter still voids it."""
    enrol_sms(svc, sms, user)
    svc.sms_send_signin_code(user, "flow", client_ip="192.0.2.1")
    code = sms.last_code()
    (key,) = [k for k in one_time._data if k.startswith("mfa:sms:")]
    raw = one_time.get(key)
    for _ in range(5):
        assert not svc.sms_verify_signin_code(user, "flow", other(code))
    one_time.put(key, raw, 600)  # as seen by a request that read it before the deletion
    svc.throttle.reset(f"mfa:{user}")
    assert not svc.sms_verify_signin_code(user, "flow", code)
