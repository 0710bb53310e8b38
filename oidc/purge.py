"""Removal of what the OIDC provider no longer needs: expired codes and tokens, signing keys past their overlap,
the recorded apps of sessions that are over, and the expired one-time values (``private_key_jwt`` ``jti``s) of
the SQL one-time store.

Kept on purpose: a *used* refresh token until it expires (presenting it again is how a stolen token is
detected: its whole family is revoked), a used code for ``CODE_KEEP`` after it expired (a replay within that
time still revokes what the code produced), a revoked token for ``REVOKED_KEEP`` (answers stay the same
without the row: invalid). A session's apps (``oidc_session_clients``) are normally deleted by back-channel
logout when the session ends; the purge removes those of sessions that are revoked, past their absolute lifetime
or deleted (which never ran the end listeners). Plain Python: a sessionmaker and a clock in, counts out;
``idhub oidc purge`` and
the token endpoint's opportunistic clean-up call it.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, exists, or_, select

from idp.models import SessionRow
from oidc.models import OidcAccessToken, OidcCode, OidcKey, OidcRefreshToken, OidcSessionClient

CODE_KEEP = timedelta(hours=1)
REVOKED_KEEP = timedelta(days=1)
ENDED_SESSION_KEEP = timedelta(hours=1)  # back-channel logout reads a just-ended session's apps: not raced here
BATCH = 5000  # rows per DELETE: short transactions, no long lock on a busy table


def _delete_in_batches(sessionmaker, model, pk, condition) -> int:
    total = 0
    while True:
        with sessionmaker() as db:
            ids = list(db.scalars(select(pk).where(condition).limit(BATCH)))
            if not ids:
                return total
            n = db.execute(delete(model).where(pk.in_(ids)).execution_options(synchronize_session=False)).rowcount
            db.commit()
        total += n
        if len(ids) < BATCH:
            return total


def purge(sessionmaker, now: datetime, one_time_store=None) -> dict[str, int]:
    """Delete what is expired at ``now``; returns the number of rows removed per kind."""
    out = {
        "codes": _delete_in_batches(sessionmaker, OidcCode, OidcCode.code_hash,
                                    OidcCode.expires_at < now - CODE_KEEP),
        "access_tokens": _delete_in_batches(
            sessionmaker, OidcAccessToken, OidcAccessToken.jti,
            or_(OidcAccessToken.expires_at < now, OidcAccessToken.revoked_at < now - REVOKED_KEEP)),
        "refresh_tokens": _delete_in_batches(
            sessionmaker, OidcRefreshToken, OidcRefreshToken.token_hash,
            or_(OidcRefreshToken.expires_at < now, OidcRefreshToken.revoked_at < now - REVOKED_KEEP)),
        # a retired key past its overlap is out of the JWKS and signs nothing: its sealed private key goes too
        "keys": _delete_in_batches(sessionmaker, OidcKey, OidcKey.kid,
                                   (OidcKey.retired_at.is_not(None)) & (OidcKey.expires_at < now)),
        # idle sessions are left to their absolute expiry: the SQL row's last activity may lag behind a cache
        "session_clients": _delete_in_batches(
            sessionmaker, OidcSessionClient, OidcSessionClient.id,
            ~exists().where(SessionRow.id == OidcSessionClient.session_id, SessionRow.expires_at > now,
                            or_(SessionRow.revoked_at.is_(None),
                                SessionRow.revoked_at > now - ENDED_SESSION_KEEP))),
    }
    purge_one_time = getattr(one_time_store, "purge_expired", None)  # Redis expires its keys by itself
    out["one_time_values"] = int(purge_one_time(now)) if callable(purge_one_time) else 0
    return out
