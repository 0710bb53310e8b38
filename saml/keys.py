"""The per-workspace SAML signing key: RSA-3072 and a self-signed certificate, created on first use, the private
key sealed at rest with SecretBox("saml-keys"); and the workspace's pairwise NameID salt.

Key rollover and metadata caching. Our metadata says ``validUntil`` = fetch time + ``METADATA_VALID`` and
``cacheDuration`` = ``METADATA_CACHE``; the metadata URL is also cacheable over HTTP for ``METADATA_HTTP_MAX_AGE``.
An SP that fetched the metadata just before a key was staged may rely on that copy until its ``validUntil`` (if it
honours only that) or for ``cacheDuration`` plus HTTP caching (if it honours ``cacheDuration``), so a staged key is
published ``MIN_PUBLISH`` = the longer of the two, plus an hour for the per-process key cache and clock skew, before
it signs. ``METADATA_CACHE`` is PT24H: the notice is bounded below by ``validUntil`` anyway, so a shorter
``cacheDuration`` would not shorten it and would only make every SP fetch (and us sign) the metadata more often;
24 hours still brings a staged certificate (or a changed endpoint) to SPs that honour it well within the notice.
"""

from __future__ import annotations

import functools
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from idp.invalidation import SAML_KEYS, generation
from saml.models import SamlKey

CERT_LIFETIME = timedelta(days=3650)
CACHE_TTL = 30.0  # seconds
METADATA_VALID = timedelta(days=7)  # the metadata's validUntil, counted from each fetch
METADATA_CACHE = timedelta(hours=24)  # the metadata's cacheDuration (PT24H)
METADATA_HTTP_MAX_AGE = 300  # seconds: Cache-Control max-age of the metadata URL
# A staged key is in the metadata at least this long before it signs (see the module docstring): 7 days and 1 hour.
MIN_PUBLISH = max(METADATA_VALID, METADATA_CACHE + timedelta(seconds=METADATA_HTTP_MAX_AGE)) + timedelta(hours=1)
ROLLOVER_RETIRE = timedelta(days=7)  # after the switch, the old certificate stays published this long
LEGACY_NAMEID_PURPOSE = "saml-persistent-nameid"  # what persistent NameIDs were keyed with before the stored salt


def xs_duration(td: timedelta) -> str:
    """An xs:duration in hours, minutes and seconds, such as ``PT24H`` (whole seconds)."""
    hours, rest = divmod(int(td.total_seconds()), 3600)
    minutes, seconds = divmod(rest, 60)
    return "PT" + ("".join(f"{v}{u}" for v, u in ((hours, "H"), (minutes, "M"), (seconds, "S")) if v) or "0S")


def fingerprint(cert_pem: str) -> str:
    """A certificate's SHA-256 fingerprint, lower-case hex without separators: a SAML key's id."""
    return x509.load_pem_x509_certificate(cert_pem.encode()).fingerprint(hashes.SHA256()).hex()


def human_duration(td: timedelta) -> str:
    days, rest = divmod(int(td.total_seconds()), 86400)
    hours = rest // 3600
    parts = [f"{days} day{'s' * (days != 1)}"] * bool(days) + [f"{hours} hour{'s' * (hours != 1)}"] * bool(hours)
    return " and ".join(parts) or f"{int(td.total_seconds())} seconds"


def rollover_rule() -> str:
    """Why a staged key needs ``MIN_PUBLISH`` of notice, in words (for the operator commands)."""
    return (f"a new signing key is published {human_duration(MIN_PUBLISH)} before it signs, because SPs may keep our "
            f"metadata until its validUntil ({human_duration(METADATA_VALID)} after they fetched it) or for its "
            f"cacheDuration ({xs_duration(METADATA_CACHE)}) before fetching it again, and until then they do not "
            f"know the new certificate")


@dataclass
class KeyState:
    current: tuple[bytes, str]  # (private key PEM, certificate PEM)
    next: tuple[bytes, str] | None
    next_active_at: datetime | None
    loaded: float  # time.monotonic() of the read
    generation: int = 0  # of SAML_KEYS, read before the load (idp.invalidation)


class SamlKeys:
    """The workspace's signing keys. Read from the database at most every ``CACHE_TTL`` seconds per process, and
    again at once after a key is staged, rolled over or revoked on any node (``idp.invalidation``)."""

    def __init__(self, hub, box):
        self.hub = hub
        self.box = box
        self._cache: dict[str, KeyState] = {}
        self._salts: dict[str, bytes] = {}

    def state(self, ws) -> KeyState:
        gen = generation(SAML_KEYS)
        st = self._cache.get(ws.id)
        if st is not None and time.monotonic() - st.loaded < CACHE_TTL and st.generation == gen:
            return st
        with self.hub.db() as db:
            row = db.get(SamlKey, ws.id)
            if row is None:
                cert, key_pem = self._generate(ws)
                db.add(SamlKey(workspace_id=ws.id, certificate=cert, private_enc=self.box.encrypt(key_pem),
                               nameid_salt=secrets.token_hex(32)))
                try:
                    db.commit()
                except IntegrityError:  # another worker made it first: use theirs
                    db.rollback()
                row = db.get(SamlKey, ws.id)
            if row.next_certificate and row.next_active_at and \
                    self.hub.clock() >= row.next_active_at + ROLLOVER_RETIRE:
                # the rollover is over: the next key becomes the only one, the old one leaves the metadata
                row.certificate, row.private_enc = row.next_certificate, row.next_private_enc
                row.next_certificate = row.next_private_enc = row.next_active_at = None
                db.commit()
            st = KeyState(current=(self.box.decrypt(row.private_enc).encode(), row.certificate),
                          next=(self.box.decrypt(row.next_private_enc).encode(), row.next_certificate)
                          if row.next_certificate else None,
                          next_active_at=row.next_active_at, loaded=time.monotonic(), generation=gen)
        self._cache[ws.id] = st
        return st

    def nameid_salt(self, ws) -> bytes:
        """The workspace's pairwise NameID salt: random (256 bits), stored with the signing key, never derived from
        ``IDHUB_SECRET_KEY`` again (so rotating it changes no NameID). A workspace whose key row predates the
        stored salt (``nameid_salt`` NULL after the migration) gets, once, the salt the old code derived from the
        secret key, so that every persistent NameID it already issued stays the same. Cached for the process'
        life: it never changes. Independent of the (sealed) signing key, so it is readable whatever the key."""
        salt = self._salts.get(ws.id)
        if salt is not None:
            return salt
        with self.hub.db() as db:
            row = db.get(SamlKey, ws.id)
        if row is None:
            self.state(ws)  # creates the key row, with a random salt
            with self.hub.db() as db:
                row = db.get(SamlKey, ws.id)
        value = row.nameid_salt
        if value is None:
            from idp.crypto import derive_key, secret_keys

            # the oldest listed key: during a rotation of IDHUB_SECRET_KEY the NameIDs were made with an earlier one
            legacy = derive_key(secret_keys(self.hub.settings)[-1], LEGACY_NAMEID_PURPOSE)
            with self.hub.db() as db:
                done = db.execute(update(SamlKey).where(SamlKey.workspace_id == ws.id,
                                                        SamlKey.nameid_salt.is_(None)).values(nameid_salt=legacy))
                db.commit()
                value = db.scalar(select(SamlKey.nameid_salt).where(SamlKey.workspace_id == ws.id))
            if done.rowcount:
                self.hub.audit.record("saml.nameid.salt_stored", workspace_id=ws.id,
                                      data={"origin": "derived from IDHUB_SECRET_KEY (NameIDs already issued)"})
        salt = value.encode()
        self._salts[ws.id] = salt
        return salt

    def get(self, ws) -> tuple[bytes, str]:
        """(private key PEM, certificate PEM) of the workspace's current key, created on first use."""
        return self.state(ws).current

    def signing(self, ws) -> tuple[bytes, str]:
        """The (private key PEM, certificate PEM) that signs now: the staged key once its time has come."""
        st = self.state(ws)
        if st.next is not None and st.next_active_at is not None and self.hub.clock() >= st.next_active_at:
            return st.next
        return st.current

    def published(self, ws) -> list[str]:
        """The signing certificates for the metadata: the current one and, during a rollover, the next."""
        st = self.state(ws)
        certs = [st.current[1]]
        if st.next is not None:
            certs.append(st.next[1])
        return certs

    def stage_next(self, ws, active_at: datetime) -> str:
        """Stage a new key: published at once, signing from ``active_at`` (at least ``MIN_PUBLISH`` away, so that
        every SP still relying on a copy of the metadata without it has fetched it again; see ``rollover_rule``).
        Replaces a staged key that has not started signing. Its certificate."""
        now = self.hub.clock()
        if active_at < now + MIN_PUBLISH:
            earliest = (now + MIN_PUBLISH).replace(microsecond=0).isoformat()
            raise ValueError(f"the new key must be published at least {human_duration(MIN_PUBLISH)} before it signs "
                             f"(the earliest is {earliest}): {rollover_rule()}")
        self.state(ws)  # the current key exists
        with self.hub.db() as db:
            row = db.get(SamlKey, ws.id, with_for_update=True)
            if row.next_active_at is not None and row.next_active_at <= now:
                raise ValueError("a rollover is already under way (the next key signs already)")
            cert, key_pem = self._generate(ws)
            row.next_certificate, row.next_private_enc = cert, self.box.encrypt(key_pem)
            row.next_active_at = active_at
            db.commit()
        self._cache.pop(ws.id, None)
        self.hub.changed(SAML_KEYS, ws.id)  # every node publishes it at once
        self.hub.audit.record("saml.key.staged", workspace_id=ws.id, data={"active_at": active_at.isoformat()})
        return cert

    def listing(self, ws) -> list[dict]:
        """The workspace's SAML signing keys: {"id" (the certificate's SHA-256, hex), "state" ("signing",
        "next" or "published"), "not_after"}."""
        st = self.state(ws)
        signing = self.signing(ws)[1]
        out = []
        for cert in self.published(ws):
            state = "signing" if cert == signing else ("next" if st.next and cert == st.next[1] else "published")
            out.append({"id": fingerprint(cert), "state": state,
                        "not_after": x509.load_pem_x509_certificate(cert.encode()).not_valid_after_utc})
        return out

    def revoke(self, ws, key_id: str | None = None, record=None) -> dict | None:
        """Emergency revocation of a (compromised) signing key, ``key_id`` its certificate's SHA-256 (hex; None:
        the key signing now). It leaves the metadata at once and never signs again on any node: the staged next
        key, if there is one, signs from now on, else a new key is made. SPs must fetch the metadata again (or be
        given the new certificate) before they accept idhub's responses: there is no overlap. Audited
        (``record(type, data)``, by default as the command line). {"revoked", "signing"} (fingerprints); None
        when no published key has this id."""
        self.state(ws)  # the key exists
        with self.hub.db() as db:
            row = db.get(SamlKey, ws.id, with_for_update=True)
            current, nxt = row.certificate, row.next_certificate
            signing = self.signing(ws)[1]
            wanted = fingerprint(signing) if key_id is None else key_id.replace(":", "").lower()
            if wanted == fingerprint(current):
                if nxt:  # the staged key (published already) takes over now
                    row.certificate, row.private_enc = nxt, row.next_private_enc
                else:
                    cert, key_pem = self._generate(ws)
                    row.certificate, row.private_enc = cert, self.box.encrypt(key_pem)
                row.next_certificate = row.next_private_enc = row.next_active_at = None
                revoked = current
            elif nxt and wanted == fingerprint(nxt):
                # the staged key leaves; the current one (still published) signs, or again signs
                row.next_certificate = row.next_private_enc = row.next_active_at = None
                revoked = nxt
            else:
                return None
            db.commit()
            now_signing = row.certificate
        self._cache.pop(ws.id, None)
        self.hub.changed(SAML_KEYS, ws.id)
        out = {"revoked": fingerprint(revoked), "signing": fingerprint(now_signing)}
        if record is None:
            self.hub.audit.record("saml.key.revoked", workspace_id=ws.id, actor_email="idhub saml revoke-key",
                                  data=out)
        else:
            record("saml.key.revoked", out)
        return out

    def certificate(self, ws) -> str:
        return self.get(ws)[1]

    def _generate(self, ws) -> tuple[str, str]:
        key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"idhub SAML {ws.slug}"[:64])])
        now = self.hub.clock()
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
                .not_valid_after(now + CERT_LIFETIME)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .sign(key, hashes.SHA256()))
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
        return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem


_REDIRECT_ALGS = {
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256": hashes.SHA256,
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha384": hashes.SHA384,
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512": hashes.SHA512,
    "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256": hashes.SHA256,
}


@functools.lru_cache(maxsize=1024)
def _public_key(cert_pem: str):
    return x509.load_pem_x509_certificate(cert_pem.encode()).public_key()


@functools.lru_cache(maxsize=64)
def private_key(key_pem: bytes):
    """Our parsed signing key (kept per process, like saml.xml's: its first use is the costly one)."""
    return serialization.load_pem_private_key(key_pem, password=None)


def verify_redirect_signature(cert_pem: str, signed: bytes, sig_alg: str, signature: bytes) -> bool:
    """The HTTP-Redirect binding's query signature (SAML bindings §3.4.4.1). No SHA-1."""
    algo = _REDIRECT_ALGS.get(sig_alg)
    if algo is None or not signature:
        return False
    try:
        pub = _public_key(cert_pem)
        if isinstance(pub, rsa.RSAPublicKey) and "rsa-" in sig_alg:
            pub.verify(signature, signed, padding.PKCS1v15(), algo())
        elif isinstance(pub, ec.EllipticCurvePublicKey) and "ecdsa-" in sig_alg:
            pub.verify(signature, signed, ec.ECDSA(algo()))
        else:
            return False
    except Exception:  # noqa: BLE001 - any failure is "not verified"
        return False
    return True
