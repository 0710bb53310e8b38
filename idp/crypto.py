"""Keys derived from the master secret (``IDHUB_SECRET_KEY``). Plain Python."""

from __future__ import annotations

import hashlib
import hmac


def derive_key(master: str, purpose: str) -> str:
    """A separate key per purpose, so that no two uses share the master secret."""
    return hmac.new(master.encode(), f"idhub|{purpose}".encode(), hashlib.sha256).hexdigest()


def secret_keys(settings) -> list[str]:
    """The master secrets that keys may have been derived from, the current one first (``IDHUB_SECRET_KEY``,
    then ``IDHUB_SECRET_KEY_PREVIOUS`` when set, for keys derived before a rotation)."""
    keys = [settings.secret_key]
    previous = getattr(settings, "secret_key_previous", "") or ""
    keys += [k for k in (p.strip() for p in previous.split(",")) if k and k not in keys]
    return keys
