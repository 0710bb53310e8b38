"""A software WebAuthn authenticator for protocol-level tests: it answers idhub's options exactly as a browser and
a CTAP2 authenticator do (P-256 / ES256, attestation ``none``, a signature counter), and lets a test bend one thing
at a time (the origin, the counter, the user handle, the signature). The browser suite uses Chromium's own virtual
authenticator instead."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

UP, UV, AT = 0x01, 0x04, 0x40


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64u(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SoftAuthenticator:
    def __init__(self, origin: str = "http://localhost", rp_id: str = "localhost", *, user_verifying: bool = True):
        self.origin = origin
        self.rp_id = rp_id
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.credential_id = os.urandom(32)
        self.sign_count = 0
        self.user_handle = b""
        self.user_verifying = user_verifying

    def _cose(self) -> bytes:
        nums = self.key.public_key().public_numbers()
        return cbor2.dumps({1: 2, 3: -7, -1: 1, -2: nums.x.to_bytes(32, "big"), -3: nums.y.to_bytes(32, "big")})

    def _flags(self) -> int:
        return UP | (UV if self.user_verifying else 0)

    def _client_data(self, kind: str, challenge: str, origin: str | None) -> bytes:
        return json.dumps({"type": kind, "challenge": challenge, "origin": origin or self.origin,
                           "crossOrigin": False}).encode()

    def create(self, options_json: str, *, origin: str | None = None) -> str:
        """The registration response (``PublicKeyCredential.toJSON()``) to ``navigator.credentials.create()``."""
        o = json.loads(options_json)
        self.user_handle = unb64u(o["user"]["id"])
        rp_hash = hashlib.sha256(o["rp"]["id"].encode()).digest()
        attested = bytes(16) + struct.pack(">H", len(self.credential_id)) + self.credential_id + self._cose()
        auth_data = rp_hash + bytes([self._flags() | AT]) + struct.pack(">I", self.sign_count) + attested
        att = cbor2.dumps({"fmt": "none", "attStmt": {}, "authData": auth_data})
        cid = b64u(self.credential_id)
        return json.dumps({"id": cid, "rawId": cid, "type": "public-key",
                           "clientExtensionResults": {"credProps": {"rk": True}},
                           "response": {"clientDataJSON": b64u(self._client_data("webauthn.create", o["challenge"],
                                                                                 origin)),
                                        "attestationObject": b64u(att), "transports": ["internal"]}})

    def get(self, options_json: str, *, origin: str | None = None, count: int | None = None,
            user_handle: bytes | None = None, tamper: bool = False) -> str:
        """The assertion (``toJSON()``) answering ``navigator.credentials.get()``; the counter grows by one unless
        ``count`` sets it."""
        o = json.loads(options_json)
        self.sign_count = self.sign_count + 1 if count is None else count
        rp_hash = hashlib.sha256(o.get("rpId", self.rp_id).encode()).digest()
        auth_data = rp_hash + bytes([self._flags()]) + struct.pack(">I", self.sign_count)
        client_data = self._client_data("webauthn.get", o["challenge"], origin)
        sig = self.key.sign(auth_data + hashlib.sha256(client_data).digest(), ec.ECDSA(hashes.SHA256()))
        if tamper:
            sig = sig[:-1] + bytes([sig[-1] ^ 1])
        cid = b64u(self.credential_id)
        handle = self.user_handle if user_handle is None else user_handle
        return json.dumps({"id": cid, "rawId": cid, "type": "public-key", "clientExtensionResults": {},
                           "response": {"clientDataJSON": b64u(client_data), "authenticatorData": b64u(auth_data),
                                        "signature": b64u(sig), **({"userHandle": b64u(handle)} if handle else {})}})
