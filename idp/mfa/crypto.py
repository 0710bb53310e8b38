"""Encryption of secrets at rest (TOTP seeds): AES-256-GCM with a per-purpose key derived by HKDF-SHA256."""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

VERSION = "v1"
NONCE_LEN = 12  # 96 bits, the GCM standard
TAG_LEN = 16
_SALT = b"idhub-secretbox-v1"


class UnreadableSecret(ValueError):
    """A sealed value that no listed key opens: made under a key that is not (or no longer) configured."""


class SecretBox:
    """AES-256-GCM (cryptography's AESGCM) with a key derived by HKDF-SHA256 from the master secret and a purpose label.

    Tokens look like ``v1:<urlsafe-b64(nonce || ciphertext+tag)>``; the purpose is the associated data, so a
    token made for one purpose never decrypts under another (even with the same master secret).

    ``master_key`` may be a list, current first (``idp.crypto.secret_keys``): encryption always uses the current
    key, decryption tries each in turn (``IDHUB_SECRET_KEY_PREVIOUS`` during a rotation). The token format does not
    change with the key, so nodes that do not know a rotation is under way read what the others write as long as
    they have the key.
    """

    def __init__(self, master_key: str | Sequence[str], purpose: str) -> None:
        masters = [master_key] if isinstance(master_key, str) else list(master_key)
        if not masters or not all(masters):
            raise ValueError("SecretBox needs a non-empty master key")
        if not purpose:
            raise ValueError("SecretBox needs a purpose label")
        self.purpose = purpose
        self._aad = purpose.encode()
        info = b"idhub:" + self._aad
        self._aeads = [AESGCM(HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=info).derive(m.encode()))
                       for m in masters]
        self._aead = self._aeads[0]

    def __repr__(self) -> str:  # never shows the key
        return f"SecretBox(purpose={self.purpose!r})"

    def encrypt(self, plaintext: str) -> str:
        nonce = os.urandom(NONCE_LEN)
        sealed = self._aead.encrypt(nonce, plaintext.encode(), self._aad)
        return f"{VERSION}:" + base64.urlsafe_b64encode(nonce + sealed).decode("ascii")

    def decrypt(self, token: str) -> str:
        """The plaintext; ``ValueError`` (without details) on tampering, a wrong key or an unknown version."""
        return self.decrypt_with_index(token)[0]

    def decrypt_with_index(self, token: str) -> tuple[str, int]:
        """(the plaintext, which key opened it: 0 the current one, 1… a previous one)."""
        if not isinstance(token, str):
            raise ValueError("not an encrypted value")
        version, sep, body = token.partition(":")
        if not sep or version != VERSION:
            raise ValueError("unknown encryption version")
        try:
            raw = base64.urlsafe_b64decode(body.encode("ascii"))
        except (binascii.Error, UnicodeEncodeError, ValueError):
            raise ValueError("malformed encrypted value") from None
        if len(raw) < NONCE_LEN + TAG_LEN:
            raise ValueError("malformed encrypted value")
        for i, aead in enumerate(self._aeads):
            try:
                return aead.decrypt(raw[:NONCE_LEN], raw[NONCE_LEN:], self._aad).decode(), i
            except InvalidTag:
                continue
        raise UnreadableSecret("cannot decrypt: wrong key or tampered value")

    def reseal(self, token: str) -> str | None:
        """``token`` encrypted under the current key, or None when it already is (``ValueError`` as ``decrypt``)."""
        plain, i = self.decrypt_with_index(token)
        return None if i == 0 else self.encrypt(plain)
