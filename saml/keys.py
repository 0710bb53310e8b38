"""The per-workspace SAML signing key: RSA-3072 and a self-signed certificate, created on first use, the private
key sealed at rest with SecretBox("saml-keys")."""

from __future__ import annotations

from datetime import timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from sqlalchemy.exc import IntegrityError

from saml.models import SamlKey

CERT_LIFETIME = timedelta(days=3650)


class SamlKeys:
    def __init__(self, hub, box):
        self.hub = hub
        self.box = box
        self._cache: dict[str, tuple[bytes, str]] = {}

    def get(self, ws) -> tuple[bytes, str]:
        """(private key PEM, certificate PEM) of the workspace, created on first use."""
        if ws.id in self._cache:
            return self._cache[ws.id]
        with self.hub.db() as db:
            row = db.get(SamlKey, ws.id)
            if row is None:
                cert, key_pem = self._generate(ws)
                db.add(SamlKey(workspace_id=ws.id, certificate=cert, private_enc=self.box.encrypt(key_pem)))
                try:
                    db.commit()
                except IntegrityError:  # another worker made it first: use theirs
                    db.rollback()
                row = db.get(SamlKey, ws.id)
            pair = (self.box.decrypt(row.private_enc).encode(), row.certificate)
        self._cache[ws.id] = pair
        return pair

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


def verify_redirect_signature(cert_pem: str, signed: bytes, sig_alg: str, signature: bytes) -> bool:
    """The HTTP-Redirect binding's query signature (SAML bindings §3.4.4.1). No SHA-1."""
    algo = _REDIRECT_ALGS.get(sig_alg)
    if algo is None or not signature:
        return False
    try:
        pub = x509.load_pem_x509_certificate(cert_pem.encode()).public_key()
        if isinstance(pub, rsa.RSAPublicKey) and "rsa-" in sig_alg:
            pub.verify(signature, signed, padding.PKCS1v15(), algo())
        elif isinstance(pub, ec.EllipticCurvePublicKey) and "ecdsa-" in sig_alg:
            pub.verify(signature, signed, ec.ECDSA(algo()))
        else:
            return False
    except Exception:  # noqa: BLE001 - any failure is "not verified"
        return False
    return True
