"""Keys derived from the master secret (``IDHUB_SECRET_KEY``) and its rotation. Plain Python.

The master secret has a current value and, while it is being rotated, earlier ones (``IDHUB_SECRET_KEY_PREVIOUS``,
newest first). Everything new is made with the current key; what was made with an earlier one keeps working:

* ``secret_keys(settings)``: the masters, current first — for itsdangerous signers (which take a list) and
  ``SecretBox`` (which decrypts under each, encrypts under the first).
* ``derive_key(master, purpose)``: one key per purpose, so that no two uses share the master secret.
* ``KeyRing.hmac_keys(purpose)``: the derived keys of a purpose, current first, then the previous masters', then
  the *retained* keys of that purpose (``RETAINED_PURPOSES``). A keyed hash of something idhub does not keep (an
  admin API token, a backup code) cannot be recomputed under a new key, so ``idhub secrets rotate`` keeps the
  earlier masters' derived keys of those purposes, sealed under the current master in ``retained_keys``: the
  earlier master itself can then be removed. Look-ups compute the hash under each key and query ``IN (…)``.
* ``key_id(master)``: a short public name of a master key (an HMAC of a constant), for logs and for data that
  records which key made it (the audit chain's verification finds the key by its id among ``secret_keys`` and the
  retained keys, never guesses).
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Sequence

# Purposes whose keyed hashes are stored and looked up later: kept across a rotation (sealed), see above.
# The audit chain's keys are retained too, so that events keyed before a rotation still verify without the old master.
RETAINED_PURPOSES = ("admin-api-tokens", "mfa-backup-codes", "oidc-sid", "audit-chain", "audit-checkpoint-ed25519")
RETAINED_BOX = "retained-keys"  # the SecretBox purpose that seals them


def derive_key(master: str, purpose: str) -> str:
    """A separate key per purpose, so that no two uses share the master secret."""
    return hmac.new(master.encode(), f"idhub|{purpose}".encode(), hashlib.sha256).hexdigest()


def key_id(master: str) -> str:
    """A short public identifier of a master key (reveals nothing about it)."""
    return derive_key(master, "key-id")[:12]


def secret_keys(settings) -> list[str]:
    """The master keys, current first, then ``IDHUB_SECRET_KEY_PREVIOUS`` in the order given (newest first)."""
    keys = [settings.secret_key]
    for k in getattr(settings, "previous_secret_keys", ()) or ():
        if k and k not in keys:
            keys.append(k)
    return keys


def signer_keys(settings) -> list[str]:
    """The masters for itsdangerous, which signs with the *last* key of its list and verifies with any."""
    return list(reversed(secret_keys(settings)))


def secret_box(settings, purpose: str):
    """A ``SecretBox`` for ``purpose``: encrypts under the current master, decrypts under any listed one."""
    from idp.mfa.crypto import SecretBox

    return SecretBox(secret_keys(settings), purpose)


class KeyRing:
    """The derived HMAC keys of each purpose for one hub, with the retained ones read from the database (cached
    for ``ttl`` seconds; they change only when ``idhub secrets rotate`` runs)."""

    def __init__(self, settings, sessionmaker=None, ttl: float = 60.0) -> None:
        self.settings = settings
        self.sm = sessionmaker
        self.ttl = ttl
        self._retained: dict[str, list[str]] | None = None
        self._loaded_at = 0.0
        self._lock = threading.Lock()

    def retained(self) -> dict[str, list[str]]:
        """purpose → the retained derived keys (hex), newest first; {} without a database or table."""
        if self.sm is None:
            return {}
        now = time.monotonic()
        if self._retained is not None and now - self._loaded_at < self.ttl:
            return self._retained
        with self._lock:
            if self._retained is None or now - self._loaded_at >= self.ttl:
                self._retained, self._loaded_at = load_retained(self.sm, self.settings), now
        return self._retained

    def invalidate(self) -> None:
        self._retained = None

    def hmac_keys(self, purpose: str) -> list[str]:
        keys = [derive_key(m, purpose) for m in secret_keys(self.settings)]
        for k in self.retained().get(purpose, []):
            if k not in keys:
                keys.append(k)
        return keys

    def pinned_key(self, purpose: str) -> str:
        """The oldest key of a purpose whose output must not change with the master (an identifier handed out,
        e.g. the OIDC ``sid`` an app compares at logout)."""
        return self.hmac_keys(purpose)[-1]


def load_retained(sm, settings) -> dict[str, list[str]]:
    from sqlalchemy import select
    from sqlalchemy.exc import SQLAlchemyError

    from idp.models import RetainedKey

    box = secret_box(settings, RETAINED_BOX)
    out: dict[str, list[str]] = {}
    try:
        with sm() as db:
            rows = db.execute(select(RetainedKey.purpose, RetainedKey.sealed)
                              .order_by(RetainedKey.created_at.desc())).all()
    except SQLAlchemyError:  # an older schema (before `idhub db upgrade`): nothing retained yet
        return {}
    for purpose, sealed in rows:
        try:
            out.setdefault(purpose, []).append(box.decrypt(sealed))
        except ValueError:  # sealed under a master no longer listed: that key is gone for good
            continue
    return out


def retained_pairs(sm, settings, first: str, second: str) -> list[tuple[bytes, bytes]]:
    """The retained keys of two purposes that belong together (one earlier master's ``first`` and ``second``
    keys), as raw bytes: the audit chain's HMAC key and its checkpoint seed."""
    from sqlalchemy import select
    from sqlalchemy.exc import SQLAlchemyError

    from idp.models import RetainedKey

    box = secret_box(settings, RETAINED_BOX)
    try:
        with sm() as db:
            rows = db.execute(select(RetainedKey.key_id, RetainedKey.purpose, RetainedKey.sealed)
                              .where(RetainedKey.purpose.in_((first, second)))).all()
    except SQLAlchemyError:  # an older schema (before `idhub db upgrade`): nothing retained yet
        return []
    by_master: dict[str, dict[str, bytes]] = {}
    for kid, purpose, sealed in rows:
        try:
            by_master.setdefault(kid, {})[purpose] = bytes.fromhex(box.decrypt(sealed))
        except ValueError:  # sealed under a master no longer listed: that key is gone for good
            continue
    return [(keys[first], keys[second]) for keys in by_master.values() if first in keys and second in keys]


def hmac_hex(key: str | bytes, msg: str | bytes) -> str:
    k = key.encode() if isinstance(key, str) else key
    m = msg.encode("utf-8", "surrogatepass") if isinstance(msg, str) else msg
    return hmac.new(k, m, hashlib.sha256).hexdigest()


def hmac_all(keys: Sequence[str], msg: str | bytes) -> list[str]:
    """``msg``'s HMAC under each key (for an indexed ``IN (…)`` look-up), in the keys' order."""
    return [hmac_hex(k, msg) for k in keys]
