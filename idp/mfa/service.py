"""Second factors: enrolment and verification of authenticator apps, SMS codes and backup codes.

Plain Python, no Flask: the database sessionmaker, the stores, the SMS sender and the clock come in as
constructor arguments. Nothing secret (codes, seeds, phone numbers) is logged or put into an exception.

Security properties (each has a test in tests/unit/test_mfa.py or tests/contract/test_mfa_race.py):
- TOTP: ±1 step of drift; a code is accepted only for a step greater than the last accepted one, advanced by
  one conditional UPDATE, so a code never passes twice, even in parallel. Seeds are stored encrypted.
- SMS: 6 digits from ``secrets``, 10 minutes, stored only as an HMAC under a key bound to
  (purpose, user, binding); one active code per key; consumed atomically; at most 5 tries per code;
  send limits per account, per number and per client address.
- Backup codes: 10 × 50 bits, stored as HMAC-SHA256, redeemed by one conditional UPDATE.
- Every wrong code of any sign-in method counts against one account-wide backoff (``mfa:{user_id}``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import phonenumbers
import pyotp
import segno
from sqlalchemy import bindparam, delete, func, select, update

from idp.mfa.crypto import SecretBox
from idp.mfa.models import BackupCode, MfaPhone, MfaTotp, WebAuthnCredential
from idp.storage.base import Backoff, OneTimeStore, ThrottleStore

log = logging.getLogger("idhub.mfa")

NOSYNC = {"synchronize_session": False}

# authenticator apps
TOTP_INTERVAL = 30
TOTP_DIGITS = 6
TOTP_DRIFT = 1  # steps either side
# SMS
SMS_CODE_TTL = 600  # seconds
SMS_MAX_TRIES = 5  # per code; then it is void
SMS_CODE_PURPOSE_ENROL = "enrol"
SMS_CODE_PURPOSE_SIGNIN = "signin"
# (key prefix, limit, window seconds), checked in this order; the first refusal stops counting
SEND_LIMITS_IP = (("ip", 20, 600),)
SEND_LIMITS_PHONE = (("phone", 5, 600),)
SEND_LIMITS_ACCOUNT = (("acct10m", 5, 600), ("acctday", 20, 86400))
MAX_PHONE_INPUT = 32
# backup codes
BACKUP_COUNT = 10
BACKUP_ALPHABET = "23456789abcdefghjkmnpqrstuvwxyz"  # no 0/o, 1/l/i: 31 symbols, ~4.95 bits each
BACKUP_LEN = 10  # ~49.5 bits, shown as "xxxxx-xxxxx"
# the account-wide verification throttle
MFA_BACKOFF = Backoff(free=5, base=2, cap=900, window=3600)
MAX_CODE_INPUT = 64

METHODS = ("webauthn", "totp", "sms", "backup_codes")

MSG_TOO_MANY_SENT = "Too many codes sent. Try again later."
MSG_SEND_FAILED = "We could not send a text message right now. Try again or use another method."
MSG_NO_PHONE = "Text messages are not set up for this account."
MSG_BAD_PHONE = "Enter a valid phone number, including the country code."

_DIGITS6 = re.compile(r"^[0-9]{6}$")
_BACKUP_RE = re.compile(f"^[{BACKUP_ALPHABET}]{{{BACKUP_LEN}}}$")


@dataclass(frozen=True)
class Enrolled:
    totp: bool
    sms: bool
    phone_masked: str | None
    backup_codes_left: int
    passkeys: int = 0

    @property
    def webauthn(self) -> bool:
        return self.passkeys > 0

    @property
    def any(self) -> bool:
        """True when a real second factor is set up (backup codes alone do not count as 2FA)."""
        return self.totp or self.sms or self.webauthn

    def methods(self) -> list[str]:
        out = ["webauthn"] if self.webauthn else []  # the phishing-resistant one first: the sign-in offers it first
        if self.totp:
            out.append("totp")
        if self.sms:
            out.append("sms")
        if self.backup_codes_left > 0:
            out.append("backup_codes")
        return out


def enrolled_columns(user_id) -> tuple:
    """The enrolment overview as four labelled scalar subqueries (totp, phone, backup_left, passkeys) on ``user_id``: a
    bound parameter, or a users.id column (they then correlate with a statement on users)."""
    return (
        select(func.count()).select_from(MfaTotp).where(
            MfaTotp.user_id == user_id, MfaTotp.confirmed_at.is_not(None), MfaTotp.secret_enc.is_not(None),
            MfaTotp.secret_enc != "").scalar_subquery().label("totp"),
        select(MfaPhone.phone).where(MfaPhone.user_id == user_id, MfaPhone.verified_at.is_not(None))
        .scalar_subquery().label("phone"),
        select(func.count()).select_from(BackupCode).where(BackupCode.user_id == user_id,
                                                           BackupCode.used_at.is_(None))
        .scalar_subquery().label("backup_left"),
        select(func.count()).select_from(WebAuthnCredential).where(WebAuthnCredential.user_id == user_id)
        .scalar_subquery().label("passkeys"),
    )


# One round trip for the enrolment overview: a confirmed authenticator, a verified phone, unused backup codes.
ENROLLED = select(*enrolled_columns(bindparam("u")))


def enrolled_from(row) -> Enrolled:
    """An ``Enrolled`` from a row with the columns of ``ENROLLED`` (totp, phone, backup_left, passkeys)."""
    has_sms = bool(row.phone)
    return Enrolled(totp=bool(row.totp), sms=has_sms, phone_masked=mask_phone(row.phone) if has_sms else None,
                    backup_codes_left=int(row.backup_left or 0), passkeys=int(getattr(row, "passkeys", 0) or 0))


@dataclass(frozen=True)
class TotpSetup:
    secret: str  # base32, 160 bits
    uri: str  # otpauth://totp/...
    qr_svg: str  # inline <svg> markup

    def __repr__(self) -> str:  # never shows the secret
        return "TotpSetup(secret=***)"


@dataclass(frozen=True)
class SendResult:
    ok: bool
    error: str | None = None
    retry_after: int = 0


class MfaError(ValueError):
    """A user-facing problem (the message is safe to show)."""


def mask_phone(e164: str) -> str:
    """``+1 ••••••••23``: the country code and the last two digits."""
    try:
        num = phonenumbers.parse(e164, None)
        cc, nsn = str(num.country_code), phonenumbers.national_significant_number(num)
    except phonenumbers.NumberParseException:
        cc, nsn = "", e164.lstrip("+")
    tail = nsn[-2:]
    hidden = "\u2022" * max(len(nsn) - len(tail), 0)
    return f"+{cc} {hidden}{tail}" if cc else f"{hidden}{tail}"


def normalise_backup_code(code: str) -> str:
    return "".join(ch for ch in code if ch not in " -\t\r\n").lower()


def _clean_digits(code: object) -> str | None:
    if not isinstance(code, str) or len(code) > MAX_CODE_INPUT:
        return None
    code = "".join(code.split())
    return code if _DIGITS6.match(code) else None


class MfaService:
    def __init__(
        self,
        sessionmaker,
        box: SecretBox,
        one_time: OneTimeStore,
        throttle: ThrottleStore,
        sms_sender,
        hmac_key: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        issuer: str = "idhub",
        hmac_keys: Callable[[], list[str]] | None = None,
        passkeys=None,
    ) -> None:
        if not hmac_key:
            raise ValueError("MfaService needs a non-empty hmac_key")
        self.sm = sessionmaker
        self.box = box
        self.one_time = one_time
        self.throttle = throttle
        self.sms_sender = sms_sender
        self._hmac_key = hmac_key.encode()
        # every key a stored backup code may have been hashed under, current first (idp.crypto.KeyRing)
        self._hmac_keys = hmac_keys or (lambda: [hmac_key])
        self.clock = clock
        self.issuer = issuer
        self.passkeys = passkeys  # idp.mfa.passkeys.PasskeyService (WebAuthn), when the hub has one

    def __repr__(self) -> str:
        return f"MfaService(issuer={self.issuer!r})"

    # --- helpers ---------------------------------------------------------------------------------

    def _now(self) -> datetime:
        now = self.clock()
        return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)

    def _mac(self, *parts: str) -> str:
        return hmac.new(self._hmac_key, "\x00".join(parts).encode(), hashlib.sha256).hexdigest()

    @staticmethod
    def _throttle_key(user_id: str) -> str:
        return f"mfa:{user_id}"

    def record_failure(self, user_id: str) -> None:
        """A refused factor checked outside ``verify`` (a passkey) counts against the account-wide backoff."""
        self.throttle.record_failure(self._throttle_key(user_id), self._now(), MFA_BACKOFF)

    def record_success(self, user_id: str) -> None:
        self.throttle.reset(self._throttle_key(user_id))

    def mfa_retry_after(self, user_id: str) -> int:
        """Seconds until the account may try a code again (0: now)."""
        now = self._now()
        return self.throttle.state(self._throttle_key(user_id), now).retry_after(now)

    def _guarded(self, user_id: str, check: Callable[[], bool]) -> bool:
        """Run ``check`` unless the account is blocked; count a failure against the account, reset on success."""
        key = self._throttle_key(user_id)
        now = self._now()
        if self.throttle.state(key, now).retry_after(now) > 0:
            return False  # blocked: do not even look at the code
        ok = bool(check())
        if ok:
            self.throttle.reset(key)
        else:
            self.throttle.record_failure(key, now, MFA_BACKOFF)
        return ok

    # --- enrolment overview ----------------------------------------------------------------------

    def enrolled(self, user_id: str) -> Enrolled:
        """What the account has set up, in one statement (it runs at every policy decision of a sign-in)."""
        with self.sm() as s:
            row = s.execute(ENROLLED, {"u": user_id}).one()
        return enrolled_from(row)

    # --- authenticator app -----------------------------------------------------------------------

    # --- authenticator app -----------------------------------------------------------------------

    def totp_begin(self, user_id: str, account_name: str) -> TotpSetup:
        """A fresh pending secret (replacing any pending one); a confirmed secret stays active until confirm."""
        secret = pyotp.random_base32()  # 32 base32 characters = 160 bits
        enc = self.box.encrypt(secret)
        with self.sm() as s, s.begin():
            row = s.get(MfaTotp, user_id)
            if row is None:
                s.add(MfaTotp(user_id=user_id, pending_secret_enc=enc, last_step=-1, created_at=self._now()))
            else:
                row.pending_secret_enc = enc
        log.info("totp enrolment started", extra={"user_id": user_id})
        return self._setup(secret, account_name)

    def totp_pending(self, user_id: str, account_name: str) -> TotpSetup | None:
        """The enrolment in progress (same secret and QR code on every page load), or None if there is none."""
        with self.sm() as s:
            row = s.get(MfaTotp, user_id)
            pending_enc = row.pending_secret_enc if row is not None else None
        secret = self._decrypt(pending_enc)
        return self._setup(secret, account_name) if secret else None

    def _setup(self, secret: str, account_name: str) -> TotpSetup:
        uri = pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_INTERVAL).provisioning_uri(
            name=account_name, issuer_name=self.issuer
        )
        return TotpSetup(secret=secret, uri=uri, qr_svg=segno.make(uri, error="m").svg_inline(scale=4))

    def _matching_steps(self, secret: str, code: str) -> list[int]:
        """Time steps within the drift window whose code equals ``code`` (constant-time compare), ascending."""
        totp = pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_INTERVAL)
        current = int(self._now().timestamp()) // TOTP_INTERVAL
        found = []
        for step in range(current - TOTP_DRIFT, current + TOTP_DRIFT + 1):
            if step >= 0 and hmac.compare_digest(totp.generate_otp(step), code):
                found.append(step)
        return found

    def _decrypt(self, token: str | None) -> str | None:
        if not token:
            return None
        try:
            return self.box.decrypt(token)
        except ValueError:
            log.error("cannot decrypt a stored TOTP secret (wrong IDHUB_SECRET_KEY?)")
            return None

    def totp_confirm(self, user_id: str, code: str) -> bool:
        """Check ``code`` against the pending secret; on success it becomes the active one."""
        code = _clean_digits(code)
        if code is None:
            return False
        with self.sm() as s:
            row = s.get(MfaTotp, user_id)
            pending_enc = row.pending_secret_enc if row is not None else None
        secret = self._decrypt(pending_enc)
        if secret is None:
            return False
        steps = self._matching_steps(secret, code)
        if not steps:
            return False
        with self.sm() as s, s.begin():
            res = s.execute(
                update(MfaTotp)
                .where(MfaTotp.user_id == user_id, MfaTotp.pending_secret_enc == pending_enc)
                .values(
                    secret_enc=pending_enc,
                    pending_secret_enc=None,
                    confirmed_at=self._now(),
                    last_step=steps[-1],
                )
                .execution_options(**NOSYNC)
            )
            ok = res.rowcount == 1
        if ok:
            log.info("totp confirmed", extra={"user_id": user_id})
        return ok

    def totp_verify(self, user_id: str, code: str) -> bool:
        """The active secret, ±1 step, and a step greater than the last accepted one (atomic, replay-proof)."""
        return self._guarded(user_id, lambda: self._totp_check(user_id, code))

    def _totp_check(self, user_id: str, code: str) -> bool:
        code = _clean_digits(code)
        if code is None:
            return False
        with self.sm() as s:
            row = s.get(MfaTotp, user_id)
            if row is None or row.confirmed_at is None:
                return False
            secret_enc, last_step = row.secret_enc, row.last_step
        secret = self._decrypt(secret_enc)
        if secret is None:
            return False
        for step in self._matching_steps(secret, code):
            if step <= last_step:
                continue
            with self.sm() as s, s.begin():
                res = s.execute(
                    update(MfaTotp)
                    .where(
                        MfaTotp.user_id == user_id,
                        MfaTotp.last_step < step,
                        MfaTotp.secret_enc == secret_enc,
                        MfaTotp.confirmed_at.is_not(None),
                    )
                    .values(last_step=step)
                    .execution_options(**NOSYNC)
                )
                if res.rowcount == 1:
                    return True
        return False

    def totp_remove(self, user_id: str) -> None:
        with self.sm() as s, s.begin():
            s.execute(delete(MfaTotp).where(MfaTotp.user_id == user_id).execution_options(**NOSYNC))
        log.info("totp removed", extra={"user_id": user_id})

    # --- SMS -------------------------------------------------------------------------------------

    def normalise_phone(self, raw: str, default_region: str = "US") -> str:
        """E.164 (``+15550100…``), or ``MfaError`` for anything that is not a valid number."""
        if not isinstance(raw, str) or len(raw) > MAX_PHONE_INPUT or not raw.strip():
            raise MfaError(MSG_BAD_PHONE)
        try:
            num = phonenumbers.parse(raw.strip(), default_region)
        except phonenumbers.NumberParseException:
            raise MfaError(MSG_BAD_PHONE) from None
        if not phonenumbers.is_valid_number(num):
            raise MfaError(MSG_BAD_PHONE)
        return phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164)

    def _code_key(self, purpose: str, user_id: str, binding: str) -> str:
        digest = hashlib.sha256("\x00".join((purpose, user_id, binding)).encode()).hexdigest()
        return f"mfa:sms:{digest}"

    def _send_allowed(self, user_id: str, phone: str, client_ip: str) -> SendResult | None:
        """None when sending is allowed, else the refusal. Counts one send on each limit up to the first refusal."""
        now = self._now()
        checks = [(f"mfa:send:{name}:{client_ip}", limit, window) for name, limit, window in SEND_LIMITS_IP]
        checks += [(f"mfa:send:{name}:{phone}", limit, window) for name, limit, window in SEND_LIMITS_PHONE]
        checks += [(f"mfa:send:{name}:{user_id}", limit, window) for name, limit, window in SEND_LIMITS_ACCOUNT]
        epoch = int(now.timestamp())
        for key, limit, window in checks:
            if not self.throttle.hit(key, limit, window, now):
                retry = max(1, window - epoch % window)
                log.warning("sms send refused: rate limit", extra={"user_id": user_id, "limit": key.split(":")[2]})
                return SendResult(False, MSG_TOO_MANY_SENT, retry)
        return None

    def _send_code(self, user_id: str, phone: str, purpose: str, binding: str, extra: dict) -> SendResult:
        """Send a fresh code; only once the message is out does it replace the previous code for the key."""
        code = f"{secrets.randbelow(10**6):06d}"
        key = self._code_key(purpose, user_id, binding)
        message = f"Your {self.issuer} code is {code}. It expires in 10 minutes. Don't share it with anyone."
        try:
            self.sms_sender.send(phone, message)
        except Exception as exc:  # noqa: BLE001 - any gateway failure is "could not send"
            log.warning("sms send failed", extra={"user_id": user_id, "error": type(exc).__name__})
            return SendResult(False, MSG_SEND_FAILED)
        payload = {
            "id": secrets.token_hex(16),  # identifies this code: its try counter starts afresh
            "h": self._mac("sms", key, code),
            "exp": int(self._now().timestamp()) + SMS_CODE_TTL,
            **extra,
        }
        self.one_time.put(key, json.dumps(payload), SMS_CODE_TTL)
        log.info("sms code sent", extra={"user_id": user_id, "purpose": purpose})
        return SendResult(True)

    def _check_code(self, purpose: str, user_id: str, binding: str, code: str) -> dict | None:
        """The stored payload if ``code`` is the active code for the key (and consume it), else None."""
        code = _clean_digits(code)
        key = self._code_key(purpose, user_id, binding)
        raw = self.one_time.get(key)
        if raw is None:
            return None
        payload = json.loads(raw)
        now = self._now()
        if int(now.timestamp()) >= payload["exp"]:
            self._delete_if_same(key, raw)
            return None
        # Reserve one try atomically before comparing: of any number of parallel guesses, only
        # SMS_MAX_TRIES ever get to compare against this code.
        tries = self.throttle.record_failure(
            f"mfa:smstry:{payload['id']}", now, Backoff(free=10**6, base=1, cap=1, window=SMS_CODE_TTL + 60)
        ).failures
        if tries > SMS_MAX_TRIES:
            # void; not deleted here: a parallel correct try among the first five may still be consuming it
            return None
        if code is None or not hmac.compare_digest(self._mac("sms", key, code), payload["h"]):
            if tries >= SMS_MAX_TRIES:
                self._delete_if_same(key, raw)
            return None
        taken = self.one_time.consume(key)
        if taken != raw:  # someone else consumed it, or a newer code replaced it in the meantime
            if taken is not None:
                left = json.loads(taken)["exp"] - int(now.timestamp())
                if left >= 1:
                    self.one_time.add(key, taken, left)  # give the newer code back
            return None
        self.throttle.reset(f"mfa:smstry:{payload['id']}")
        return payload

    def _delete_if_same(self, key: str, raw: str) -> None:
        taken = self.one_time.consume(key)
        if taken is not None and taken != raw:
            left = json.loads(taken)["exp"] - int(self._now().timestamp())
            if left >= 1:
                self.one_time.add(key, taken, left)

    def sms_begin(self, user_id: str, phone: str, *, client_ip: str) -> SendResult:
        """Normalise ``phone`` (``MfaError`` if invalid), keep it as pending and text it a verification code."""
        phone = self.normalise_phone(phone)
        refused = self._send_allowed(user_id, phone, client_ip)
        if refused is not None:
            return refused
        with self.sm() as s, s.begin():
            row = s.get(MfaPhone, user_id)
            if row is None:
                s.add(MfaPhone(user_id=user_id, pending_phone=phone, created_at=self._now()))
            else:
                row.pending_phone = phone
        return self._send_code(user_id, phone, SMS_CODE_PURPOSE_ENROL, "", {"phone": phone})

    def sms_confirm(self, user_id: str, code: str) -> bool:
        """The enrolment code; on success the pending number (the one the code went to) becomes the phone."""
        payload = self._check_code(SMS_CODE_PURPOSE_ENROL, user_id, "", code)
        if payload is None:
            return False
        with self.sm() as s, s.begin():
            res = s.execute(
                update(MfaPhone)
                .where(MfaPhone.user_id == user_id, MfaPhone.pending_phone == payload["phone"])
                .values(phone=payload["phone"], pending_phone=None, verified_at=self._now())
                .execution_options(**NOSYNC)
            )
            ok = res.rowcount == 1
        if ok:
            log.info("sms phone verified", extra={"user_id": user_id})
        return ok

    def sms_send_signin_code(self, user_id: str, binding: str, *, client_ip: str) -> SendResult:
        """Text a sign-in code that only works for the login flow ``binding``."""
        if not binding:
            raise ValueError("a sign-in code must be bound to a login flow")
        with self.sm() as s:
            row = s.get(MfaPhone, user_id)
            phone = row.phone if row is not None and row.verified_at is not None else None
        if not phone:
            return SendResult(False, MSG_NO_PHONE)
        refused = self._send_allowed(user_id, phone, client_ip)
        if refused is not None:
            return refused
        return self._send_code(user_id, phone, SMS_CODE_PURPOSE_SIGNIN, binding, {})

    def sms_verify_signin_code(self, user_id: str, binding: str, code: str) -> bool:
        return self._guarded(user_id, lambda: self._sms_signin_check(user_id, binding, code))

    def _sms_signin_check(self, user_id: str, binding: str, code: str) -> bool:
        if not binding:
            return False
        with self.sm() as s:
            row = s.get(MfaPhone, user_id)
            if row is None or row.verified_at is None or not row.phone:
                return False
        return self._check_code(SMS_CODE_PURPOSE_SIGNIN, user_id, binding, code) is not None

    def sms_remove(self, user_id: str) -> None:
        with self.sm() as s, s.begin():
            s.execute(delete(MfaPhone).where(MfaPhone.user_id == user_id).execution_options(**NOSYNC))
        self.one_time.delete(self._code_key(SMS_CODE_PURPOSE_ENROL, user_id, ""))
        log.info("sms phone removed", extra={"user_id": user_id})

    # --- backup codes ----------------------------------------------------------------------------

    def _backup_hash(self, user_id: str, normalised: str) -> str:
        # the user id is mixed in so that two users' codes can never collide on the unique index
        return self._mac("backup", user_id, normalised)

    def _backup_hashes(self, user_id: str, normalised: str) -> list[str]:
        """The code's hash under every key it may have been stored with (one indexed ``IN`` look-up)."""
        msg = "\x00".join(("backup", user_id, normalised)).encode()
        return [hmac.new(k.encode(), msg, hashlib.sha256).hexdigest() for k in self._hmac_keys()]

    def backup_generate(self, user_id: str) -> list[str]:
        """10 new codes ("xxxxx-xxxxx"); the old ones are deleted in the same transaction."""
        codes: list[str] = []
        while len(codes) < BACKUP_COUNT:
            raw = "".join(secrets.choice(BACKUP_ALPHABET) for _ in range(BACKUP_LEN))
            if raw not in codes:
                codes.append(raw)
        now = self._now()
        with self.sm() as s, s.begin():
            s.execute(delete(BackupCode).where(BackupCode.user_id == user_id).execution_options(**NOSYNC))
            s.add_all(
                BackupCode(user_id=user_id, code_hash=self._backup_hash(user_id, c), created_at=now) for c in codes
            )
        log.info("backup codes generated", extra={"user_id": user_id})
        half = BACKUP_LEN // 2
        return [f"{c[:half]}-{c[half:]}" for c in codes]

    def backup_verify(self, user_id: str, code: str) -> bool:
        return self._guarded(user_id, lambda: self._backup_check(user_id, code))

    def _backup_check(self, user_id: str, code: str) -> bool:
        if not isinstance(code, str) or len(code) > MAX_CODE_INPUT:
            return False
        code = normalise_backup_code(code)
        if not _BACKUP_RE.match(code):
            return False
        with self.sm() as s, s.begin():
            res = s.execute(
                update(BackupCode)
                .where(
                    BackupCode.user_id == user_id,
                    BackupCode.code_hash.in_(self._backup_hashes(user_id, code)),
                    BackupCode.used_at.is_(None),
                )
                .values(used_at=self._now())
                .execution_options(**NOSYNC)
            )
            ok = res.rowcount == 1
        if ok:
            log.info("backup code used", extra={"user_id": user_id})
        return ok

    def backup_remaining(self, user_id: str) -> int:
        with self.sm() as s:
            return int(
                s.scalar(
                    select(func.count())
                    .select_from(BackupCode)
                    .where(BackupCode.user_id == user_id, BackupCode.used_at.is_(None))
                )
                or 0
            )

    # --- everything ------------------------------------------------------------------------------

    def disable_all(self, user_id: str) -> None:
        """Remove the passkeys, the authenticator app, the phone and the backup codes (one transaction)."""
        with self.sm() as s, s.begin():
            for model in (WebAuthnCredential, MfaTotp, MfaPhone, BackupCode):
                s.execute(delete(model).where(model.user_id == user_id).execution_options(**NOSYNC))
        self.one_time.delete(self._code_key(SMS_CODE_PURPOSE_ENROL, user_id, ""))
        log.info("2fa disabled", extra={"user_id": user_id})

    def verify(self, user_id: str, method: str, code: str, *, binding: str | None = None) -> bool:
        """What sign-in calls. False for a wrong code, an unknown method, or while the account is blocked."""
        if method == "totp":
            return self.totp_verify(user_id, code)
        if method == "sms":
            if not binding:
                return False
            return self.sms_verify_signin_code(user_id, binding, code)
        if method == "backup_codes":
            return self.backup_verify(user_id, code)
        return False
