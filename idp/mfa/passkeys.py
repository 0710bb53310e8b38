"""Passkeys and security keys (WebAuthn Level 2/3), on py_webauthn (``webauthn`` on PyPI, Duo Labs).

Plain Python, no Flask: the database sessionmaker, the one-time store and the clock come in as arguments.

- Relying party: the host of ``IDHUB_BASE_URL`` is the RP ID, and the origin of a response must be exactly that
  URL's origin (scheme, host and port). Attestation ``none``: no statement is asked for or kept.
- User verification: ``preferred`` for a second factor (the password was the first), ``required`` for a
  passwordless sign-in (the passkey is then both factors).
- Challenges: 32 random bytes, bound to what they were issued for (the login flow, the browser, the session)
  and kept in the one-time store for 5 minutes; a response takes its challenge with an atomic ``consume``, so a
  challenge serves one response at most, right or wrong, and a replayed response finds none.
- A credential id is unique across the hub: it belongs to one user of one workspace, and a response naming a
  credential of another user or workspace is refused.
- Signature counters: a counter that does not grow (unless the authenticator keeps none: both 0) means a cloned
  authenticator; the sign-in is refused (``PasskeyClone``) and the caller alerts the user and the admins. The
  counter moves by one conditional UPDATE, so two parallel uses of one counter value cannot both pass.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers.structs import (
    AttestationConveyancePreference,
    AuthenticatorSelectionCriteria,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from idp.mfa.models import WebAuthnCredential

log = logging.getLogger("idhub.passkeys")

CHALLENGE_TTL = 300  # seconds
CEREMONY_TIMEOUT_MS = 120_000
MAX_RESPONSE = 16_384  # characters of a JSON response; a real one is ~1-2 KB
MAX_NAME = 64
MAX_CREDENTIALS = 20  # per user
NOSYNC = {"synchronize_session": False}

# the purposes a challenge is issued for (the key names them: one cannot stand in for another)
REGISTER, SECOND_FACTOR, PASSWORDLESS, CONFIRM = "reg", "mfa", "signin", "confirm"

MSG_EXPIRED = "This passkey request expired or was already used. Try again."
MSG_INVALID = "Your passkey's answer could not be verified. Try again, or use another way to sign in."
MSG_MALFORMED = "Your browser sent an answer we could not read. Try again."
MSG_UNKNOWN = "This passkey is not registered for this account. Use another passkey or another way to sign in."
MSG_ORIGIN = "This passkey answer was made for another website and cannot be used here."
MSG_CLONE = ("This passkey was refused because it may have been copied. We have alerted you and your "
             "organisation's admins. Use another way to sign in and remove this passkey.")
MSG_DUPLICATE = "This passkey is already registered."
MSG_TOO_MANY = f"You can register at most {MAX_CREDENTIALS} passkeys. Remove one first."
MSG_NAME = "Give the passkey a name (at most 64 characters), for example “Work laptop”."


class PasskeyError(ValueError):
    """A refused WebAuthn response: ``message`` is safe to show, ``reason`` goes to the audit log."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.message = message
        self.reason = reason


class PasskeyClone(PasskeyError):
    """A valid signature with a counter that went backwards: the credential's owner and its name."""

    def __init__(self, user_id: str, workspace_id: str, name: str):
        super().__init__(MSG_CLONE, "counter")
        self.user_id, self.workspace_id, self.name = user_id, workspace_id, name


@dataclass(frozen=True)
class Passkey:
    id: str
    name: str
    created_at: datetime
    last_used_at: datetime | None
    discoverable: bool
    backed_up: bool


@dataclass(frozen=True)
class Verified:
    user_id: str
    passkey_id: str
    name: str
    user_verified: bool


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def clean_name(name: object) -> str | None:
    """A passkey's name: printable, 1-64 characters after trimming; None when unusable."""
    if not isinstance(name, str):
        return None
    name = " ".join(name.split())
    if not name or len(name) > MAX_NAME or any(not ch.isprintable() for ch in name):
        return None
    return name


def _parse(response: object) -> dict:
    """The browser's JSON (``PublicKeyCredential.toJSON()``): a dict with a base64url ``id``, or PasskeyError."""
    if not isinstance(response, str) or not response.strip():
        raise PasskeyError(MSG_MALFORMED, "malformed")
    if len(response) > MAX_RESPONSE:
        raise PasskeyError(MSG_MALFORMED, "oversized")
    try:
        doc = json.loads(response)
    except (ValueError, RecursionError):
        raise PasskeyError(MSG_MALFORMED, "malformed") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("id"), str) or not isinstance(doc.get("response"), dict):
        raise PasskeyError(MSG_MALFORMED, "malformed")
    cid = doc["id"]
    if not cid or len(cid) > 1366 or not all(c.isalnum() or c in "-_" for c in cid):
        raise PasskeyError(MSG_MALFORMED, "malformed")
    if doc.get("rawId", cid) != cid:
        raise PasskeyError(MSG_MALFORMED, "malformed")
    return doc


def _client_origin(doc: dict) -> str | None:
    """The origin the browser wrote into clientDataJSON (for a clear message), or None if unreadable."""
    try:
        data = json.loads(unb64url(doc["response"]["clientDataJSON"]))
        return data.get("origin") if isinstance(data, dict) else None
    except (KeyError, TypeError, ValueError):
        return None


class PasskeyService:
    def __init__(self, sessionmaker, one_time, base_url: str, rp_name: str = "idhub",
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)):
        parts = urlsplit(base_url)
        self.sm = sessionmaker
        self.one_time = one_time
        self.rp_id = parts.hostname or "localhost"
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.rp_name = rp_name
        self.clock = clock

    def __repr__(self) -> str:
        return f"PasskeyService(rp_id={self.rp_id!r})"

    def _now(self) -> datetime:
        now = self.clock()
        return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)

    @staticmethod
    def _key(purpose: str, binding: str) -> str:
        if not binding:
            raise ValueError("a WebAuthn challenge must be bound to something")
        return "wa:" + purpose + ":" + hashlib.sha256(binding.encode()).hexdigest()

    def _issue(self, purpose: str, binding: str, challenge: bytes, **data) -> None:
        self.one_time.put(self._key(purpose, binding), json.dumps({"c": b64url(challenge), **data}), CHALLENGE_TTL)

    def _take(self, purpose: str, binding: str) -> dict:
        raw = self.one_time.consume(self._key(purpose, binding)) if binding else None
        if raw is None:
            raise PasskeyError(MSG_EXPIRED, "challenge")
        return json.loads(raw)

    # ---- the user's passkeys ---------------------------------------------------------------------------------
    def list(self, user_id: str) -> list[Passkey]:
        with self.sm() as s:
            rows = s.scalars(select(WebAuthnCredential).where(WebAuthnCredential.user_id == user_id)
                             .order_by(WebAuthnCredential.created_at)).all()
            return [Passkey(r.id, r.name, r.created_at, r.last_used_at, r.discoverable, r.backed_up) for r in rows]

    def get(self, user_id: str, passkey_id: str) -> Passkey | None:
        return next((p for p in self.list(user_id) if p.id == passkey_id), None)

    def count(self, user_id: str) -> int:
        with self.sm() as s:
            return int(s.scalar(select(func.count()).select_from(WebAuthnCredential)
                                .where(WebAuthnCredential.user_id == user_id)) or 0)

    def rename(self, user_id: str, passkey_id: str, name: str) -> bool:
        with self.sm() as s, s.begin():
            res = s.execute(update(WebAuthnCredential).where(WebAuthnCredential.user_id == user_id,
                                                             WebAuthnCredential.id == passkey_id)
                            .values(name=name).execution_options(**NOSYNC))
            return res.rowcount == 1

    def remove(self, user_id: str, passkey_id: str) -> bool:
        with self.sm() as s, s.begin():
            res = s.execute(delete(WebAuthnCredential).where(WebAuthnCredential.user_id == user_id,
                                                             WebAuthnCredential.id == passkey_id)
                            .execution_options(**NOSYNC))
            ok = res.rowcount == 1
        if ok:
            log.info("passkey removed", extra={"user_id": user_id})
        return ok

    def remove_all(self, user_id: str, s=None) -> int:
        """Every passkey of the user (Reset 2FA, deprovisioning); in ``s``'s transaction when given."""
        stmt = delete(WebAuthnCredential).where(WebAuthnCredential.user_id == user_id).execution_options(**NOSYNC)
        if s is not None:
            return s.execute(stmt).rowcount
        with self.sm() as s2, s2.begin():
            return s2.execute(stmt).rowcount

    def _descriptors(self, user_id: str) -> list[PublicKeyCredentialDescriptor]:
        with self.sm() as s:
            ids = s.scalars(select(WebAuthnCredential.credential_id)
                            .where(WebAuthnCredential.user_id == user_id)).all()
        return [PublicKeyCredentialDescriptor(id=unb64url(c)) for c in ids]

    # ---- registration ------------------------------------------------------------------------------------------
    def registration_options(self, *, user_id: str, user_name: str, display_name: str, binding: str) -> str:
        """The JSON for ``navigator.credentials.create()``: a discoverable credential preferred (passwordless
        sign-in needs one), user verification preferred, no attestation, the user's passkeys excluded."""
        options = generate_registration_options(
            rp_id=self.rp_id, rp_name=self.rp_name, user_name=user_name, user_id=user_id.encode(),
            user_display_name=display_name or user_name, timeout=CEREMONY_TIMEOUT_MS,
            attestation=AttestationConveyancePreference.NONE,
            authenticator_selection=AuthenticatorSelectionCriteria(
                resident_key=ResidentKeyRequirement.PREFERRED,
                user_verification=UserVerificationRequirement.PREFERRED),
            exclude_credentials=self._descriptors(user_id),
        )
        self._issue(REGISTER, binding, options.challenge, u=user_id)
        doc = json.loads(options_to_json(options))
        doc["extensions"] = {"credProps": True}  # tells whether the credential is discoverable
        return json.dumps(doc)

    def register(self, *, user_id: str, workspace_id: str, binding: str, response: str, name: str) -> Passkey:
        """Verify the browser's answer to ``registration_options`` and keep the credential (PasskeyError)."""
        clean = clean_name(name)
        if clean is None:
            raise PasskeyError(MSG_NAME, "name")
        doc = _parse(response)
        issued = self._take(REGISTER, binding)
        if issued.get("u") != user_id:
            raise PasskeyError(MSG_EXPIRED, "challenge")
        if self.count(user_id) >= MAX_CREDENTIALS:
            raise PasskeyError(MSG_TOO_MANY, "limit")
        origin = _client_origin(doc)
        try:
            verified = verify_registration_response(credential=doc, expected_challenge=unb64url(issued["c"]),
                                                    expected_rp_id=self.rp_id, expected_origin=self.origin)
        except Exception as exc:  # noqa: BLE001 - the library raises many types for a bad response
            log.info("passkey registration refused", extra={"user_id": user_id, "error": type(exc).__name__})
            if origin is not None and origin != self.origin:
                raise PasskeyError(MSG_ORIGIN, "origin") from None
            raise PasskeyError(MSG_INVALID, "invalid") from None
        ext = doc.get("clientExtensionResults")
        props = ext.get("credProps") if isinstance(ext, dict) else None
        discoverable = bool(props.get("rk")) if isinstance(props, dict) else False
        transports = doc["response"].get("transports")
        transports = ",".join(t for t in transports if isinstance(t, str))[:200] if isinstance(transports, list) \
            else ""
        now = self._now()
        row = WebAuthnCredential(user_id=user_id, workspace_id=workspace_id,
                                 credential_id=b64url(verified.credential_id),
                                 public_key=verified.credential_public_key, sign_count=verified.sign_count,
                                 name=clean, aaguid=str(verified.aaguid)[:36], transports=transports,
                                 discoverable=discoverable, backed_up=bool(verified.credential_backed_up),
                                 created_at=now)
        try:
            with self.sm() as s, s.begin():
                s.add(row)
        except IntegrityError:
            raise PasskeyError(MSG_DUPLICATE, "duplicate") from None
        log.info("passkey registered", extra={"user_id": user_id})
        return Passkey(row.id, clean, now, None, discoverable, row.backed_up)

    # ---- authentication ----------------------------------------------------------------------------------------
    def authentication_options(self, *, purpose: str, binding: str, user_id: str | None = None) -> str:
        """The JSON for ``navigator.credentials.get()``. A second factor or a confirmation names the user's
        credentials (user verification preferred); a passwordless sign-in names none (a discoverable credential
        answers) and requires user verification."""
        passwordless = purpose == PASSWORDLESS
        allow = [] if passwordless else self._descriptors(user_id or "")
        uv = UserVerificationRequirement.REQUIRED if passwordless else UserVerificationRequirement.PREFERRED
        options = generate_authentication_options(rp_id=self.rp_id, timeout=CEREMONY_TIMEOUT_MS,
                                                  allow_credentials=allow, user_verification=uv)
        self._issue(purpose, binding, options.challenge, u=user_id or "")
        return options_to_json(options)

    def authenticate(self, *, purpose: str, binding: str, response: str, workspace_id: str,
                     user_id: str | None = None) -> Verified:
        """Verify an assertion: the challenge issued for (``purpose``, ``binding``) is consumed first; the
        credential must be of ``user_id`` (a second factor, a confirmation) or of someone in ``workspace_id``
        (passwordless). PasskeyError (PasskeyClone for a counter that went backwards)."""
        doc = _parse(response)
        issued = self._take(purpose, binding)
        if (issued.get("u") or None) != (user_id or None):
            raise PasskeyError(MSG_EXPIRED, "challenge")
        with self.sm() as s:
            row = s.scalar(select(WebAuthnCredential).where(WebAuthnCredential.credential_id == doc["id"]))
            if row is not None:
                s.expunge(row)
        if row is None:
            raise PasskeyError(MSG_UNKNOWN, "unknown_credential")
        if row.workspace_id != workspace_id or (user_id is not None and row.user_id != user_id):
            raise PasskeyError(MSG_UNKNOWN, "other_user")
        handle = doc["response"].get("userHandle")
        if handle:  # a discoverable credential names its user: it must be the credential's owner
            try:
                owner = unb64url(handle).decode()
            except (ValueError, TypeError, UnicodeDecodeError, AttributeError):
                raise PasskeyError(MSG_MALFORMED, "malformed") from None
            if not secrets.compare_digest(owner.encode(), row.user_id.encode()):
                raise PasskeyError(MSG_UNKNOWN, "other_user")
        origin = _client_origin(doc)
        try:
            verified = verify_authentication_response(
                credential=doc, expected_challenge=unb64url(issued["c"]), expected_rp_id=self.rp_id,
                expected_origin=self.origin, credential_public_key=row.public_key,
                credential_current_sign_count=0,  # the counter is checked below, atomically, once the signature holds
                require_user_verification=purpose == PASSWORDLESS)
        except Exception as exc:  # noqa: BLE001 - the library raises many types for a bad response
            log.info("passkey assertion refused", extra={"user_id": row.user_id, "error": type(exc).__name__})
            if origin is not None and origin != self.origin:
                raise PasskeyError(MSG_ORIGIN, "origin") from None
            raise PasskeyError(MSG_INVALID, "invalid") from None
        new = int(verified.new_sign_count)
        c = WebAuthnCredential
        with self.sm() as s, s.begin():
            grows = c.sign_count < new if new > 0 else c.sign_count == 0  # 0 and 0: an authenticator without one
            res = s.execute(update(c).where(c.id == row.id, grows)
                            .values(sign_count=new, last_used_at=self._now()).execution_options(**NOSYNC))
            moved = res.rowcount == 1
        if not moved:
            log.warning("passkey counter did not grow: possible clone", extra={"user_id": row.user_id})
            raise PasskeyClone(row.user_id, row.workspace_id, row.name)
        return Verified(row.user_id, row.id, row.name, bool(verified.user_verified))
