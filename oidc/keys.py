"""Signing keys of the OIDC provider, per workspace: created on first use, private keys sealed at rest,
rotated with an overlap during which the old public key stays in the JWKS."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta

from joserfc import jwk
from joserfc.jwk import ECKey, KeySet, RSAKey
from sqlalchemy import or_, select

from idp.invalidation import OIDC_KEYS, generation
from oidc.models import OidcKey

ALGORITHMS = ("RS256", "ES256")  # the only algorithms we sign with and accept
DEFAULT_ALG = "RS256"
SIGNING_KEY_TTL = 60.0  # seconds at most a process keeps the signing key it looked up (a rotation or revocation
# on any node drops it at once: idp.invalidation)
DEFAULT_OVERLAP = timedelta(days=2)  # longer than any token we sign lives (id_token 1 h, logout token 2 min)


def _generate(alg: str):
    if alg == "RS256":
        return RSAKey.generate_key(2048, private=True, auto_kid=True)
    if alg == "ES256":
        return ECKey.generate_key("P-256", private=True, auto_kid=True)
    raise ValueError(f"unsupported signing algorithm {alg!r}")


class KeyStore:
    """Reads and creates keys through a sessionmaker; imported private keys are cached per kid."""

    def __init__(self, db, box, clock):
        self.db = db
        self.box = box
        self.clock = clock
        self._private: dict[str, object] = {}
        self._lock = threading.Lock()
        self._current: dict[tuple[str, str], tuple[float, str, object, int]] = {}

    # ---- public side ------------------------------------------------------------------------------
    def published(self, workspace_id: str) -> list[OidcKey]:
        now = self.clock()
        with self.db() as db:
            rows = db.scalars(select(OidcKey).where(
                OidcKey.workspace_id == workspace_id,
                or_(OidcKey.expires_at.is_(None), OidcKey.expires_at > now),
            ).order_by(OidcKey.created_at.desc())).all()
        return list(rows)

    def jwks(self, workspace_id: str) -> dict:
        for alg in ALGORITHMS:  # the JWKS always holds an RSA and an EC P-256 key (made on first use)
            self.signing_key(workspace_id, alg)
        keys = []
        rows = self.published(workspace_id)  # newest first; RSA keys before EC keys (the default algorithm first)
        for row in sorted(rows, key=lambda r: ALGORITHMS.index(r.alg) if r.alg in ALGORITHMS else len(ALGORITHMS)):
            d = dict(row.public_jwk)
            d.update({"kid": row.kid, "alg": row.alg, "use": "sig"})
            keys.append(d)
        return {"keys": keys}

    def verification_keys(self, workspace_id: str) -> KeySet:
        """The workspace's published public keys (never a symmetric key: HS256 with them cannot verify)."""
        return KeySet([jwk.import_key({**row.public_jwk, "kid": row.kid}) for row in self.published(workspace_id)])

    # ---- private side -----------------------------------------------------------------------------
    def invalidate(self) -> None:
        with self._lock:
            self._current.clear()

    def signing_key(self, workspace_id: str, alg: str = DEFAULT_ALG):
        """(kid, private key) of the newest non-retired key of ``alg``; one is created on first use.

        Remembered for ``SIGNING_KEY_TTL`` seconds per process (the parsed key too), and no longer than the next
        rotation or revocation on any node (``idp.invalidation``): a revoked key never signs again anywhere."""
        gen = generation(OIDC_KEYS)
        hit = self._current.get((workspace_id, alg))
        if hit is not None and time.monotonic() - hit[0] < SIGNING_KEY_TTL and hit[3] == gen:
            return hit[1], hit[2]
        now = self.clock()
        with self.db() as db:
            row = db.scalars(select(OidcKey).where(
                OidcKey.workspace_id == workspace_id, OidcKey.alg == alg, OidcKey.retired_at.is_(None),
            ).order_by(OidcKey.created_at.desc()).limit(1)).first()
            if row is None:
                row = self._create(db, workspace_id, alg, now)
                db.commit()
        key = self._load_private(row)
        with self._lock:
            self._current[(workspace_id, alg)] = (time.monotonic(), row.kid, key, gen)
        return row.kid, key

    def _create(self, db, workspace_id: str, alg: str, now: datetime) -> OidcKey:
        key = _generate(alg)
        kid = key.kid or key.thumbprint()
        row = OidcKey(kid=kid, workspace_id=workspace_id, alg=alg, public_jwk=key.as_dict(private=False),
                      private_enc=self.box.encrypt(key.as_pem(private=True).decode()), created_at=now)
        db.add(row)
        db.flush()
        self._private[kid] = key
        return row

    def _load_private(self, row: OidcKey):
        with self._lock:
            key = self._private.get(row.kid)
            if key is None:
                pem = self.box.decrypt(row.private_enc)
                key = jwk.import_key(pem, "RSA" if row.alg == "RS256" else "EC", {"kid": row.kid})
                self._private[row.kid] = key
        return key

    def rotate(self, workspace_id: str, alg: str = DEFAULT_ALG, overlap: timedelta = DEFAULT_OVERLAP) -> str:
        """Make a new signing key; older keys of ``alg`` stop signing now and leave the JWKS after ``overlap``."""
        now = self.clock()
        with self.db() as db:
            for old in db.scalars(select(OidcKey).where(OidcKey.workspace_id == workspace_id, OidcKey.alg == alg,
                                                        OidcKey.retired_at.is_(None))):
                old.retired_at = now
                old.expires_at = now + overlap
            row = self._create(db, workspace_id, alg, now + timedelta(microseconds=1))
            db.commit()
        self.invalidate()
        return row.kid

    def revoke(self, workspace_id: str, kid: str) -> tuple[str, str | None] | None:
        """Emergency revocation of a (compromised) key: it leaves the JWKS now (no overlap: what it signed no
        longer verifies) and never signs again; if it was signing, a new key of its algorithm replaces it.
        (alg, the replacement's kid or None); None when the workspace has no such published key."""
        now = self.clock()
        with self.db() as db:
            row = db.scalar(select(OidcKey).where(OidcKey.workspace_id == workspace_id, OidcKey.kid == kid,
                                                  or_(OidcKey.expires_at.is_(None), OidcKey.expires_at > now)))
            if row is None:
                return None
            signing = row.retired_at is None
            row.retired_at = row.retired_at or now
            row.expires_at = now
            replacement = self._create(db, workspace_id, row.alg, now + timedelta(microseconds=1)) if signing \
                else None
            db.commit()
            alg = row.alg
        with self._lock:
            self._private.pop(kid, None)
        self.invalidate()
        return alg, replacement.kid if replacement is not None else None
