"""Whether an error means a backend cannot be reached (answered 503 with ``Retry-After``) rather than a bug (500).
Plain Python."""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from idp.storage.base import StoreUnavailable

try:  # redis is optional at run time (no IDHUB_REDIS_URL), but installed
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    REDIS_ERRORS: tuple = (RedisConnectionError, RedisTimeoutError)
except ImportError:  # pragma: no cover
    REDIS_ERRORS = ()


_CONNECTION_HINTS = ("could not connect", "connection", "server closed", "timeout", "timed out", "refused",
                     "database is locked", "unable to open database", "terminating", "too many clients")


def first_line(exc: Exception) -> str:
    orig = getattr(exc, "orig", None) or exc
    return (str(orig).strip().splitlines() or [""])[0][:200]


def is_unavailable(exc: Exception) -> bool:
    """A backend that cannot be reached (503), as opposed to a bug such as a missing table (500)."""
    if isinstance(exc, (StoreUnavailable, PoolTimeout, *REDIS_ERRORS)):  # PoolTimeout: every connection busy
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        if isinstance(exc, OperationalError):
            text = first_line(exc).lower()
            return any(h in text for h in _CONNECTION_HINTS)
    return False
