"""Keys derived from the master secret (``IDHUB_SECRET_KEY``). Plain Python."""

from __future__ import annotations

import hashlib
import hmac


def derive_key(master: str, purpose: str) -> str:
    """A separate key per purpose, so that no two uses share the master secret."""
    return hmac.new(master.encode(), f"idhub|{purpose}".encode(), hashlib.sha256).hexdigest()
