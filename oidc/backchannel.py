"""OpenID Connect Back-Channel Logout: when an idhub session ends, every app that received tokens in it gets a
signed logout token, and the session's refresh and access tokens are revoked.

``install`` registers it as a session-end listener of the hub's ``SessionManager``.
"""

from __future__ import annotations

import logging
import secrets
import threading
import urllib.request
from urllib.parse import urlencode

from sqlalchemy import select

from idp.models import Workspace
from oidc.models import OidcAccessToken, OidcClient
from oidc.provider import BACKCHANNEL_EVENT, OidcService, _ts

log = logging.getLogger("idhub.oidc.backchannel")
LOGOUT_TOKEN_TTL = 120
POST_TIMEOUT = 5


def _post(url: str, logout_token: str) -> None:
    data = urlencode({"logout_token": logout_token}).encode()
    req = urllib.request.Request(url, data=data, method="POST",  # noqa: S310 (an admin-configured http(s) URL)
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    try:
        with urllib.request.urlopen(req, timeout=POST_TIMEOUT) as resp:  # noqa: S310
            resp.read(1024)
    except Exception as exc:  # an app that is down must not break sign-out; it is logged
        log.warning("back-channel logout failed", extra={"error": type(exc).__name__})


class BackchannelLogout:
    def __init__(self, svc: OidcService):
        self.svc = svc
        self.post = _post
        self.dispatch = lambda fn: threading.Thread(target=fn, daemon=True).start()

    def notify(self, session_ids, reason: str) -> None:
        """The session-end listener: (ended ids, reason)."""
        self.session_ended(session_ids)

    def session_ended(self, session_ids) -> None:
        ids = [s for s in session_ids if s]
        if not ids:
            return
        hub = self.svc.hub
        with hub.db() as db:
            rows = db.execute(
                select(OidcAccessToken.session_id, OidcAccessToken.user_id, OidcAccessToken.workspace_id,
                       OidcClient.client_id, OidcClient.backchannel_logout_uri)
                .join(OidcClient, (OidcClient.workspace_id == OidcAccessToken.workspace_id)
                      & (OidcClient.client_id == OidcAccessToken.client_id))
                .where(OidcAccessToken.session_id.in_(ids)).distinct()
            ).all()
            workspaces = {w.id: w for w in db.scalars(select(Workspace).where(
                Workspace.id.in_({r.workspace_id for r in rows})))} if rows else {}
        for sid in ids:
            self.svc.revoke_session(sid)
        sent = set()
        now = hub.clock()
        for r in rows:
            if not r.backchannel_logout_uri or (r.session_id, r.client_id) in sent:
                continue
            sent.add((r.session_id, r.client_id))
            ws = workspaces[r.workspace_id]
            claims = {"iss": self.svc.issuer(ws), "aud": r.client_id, "iat": _ts(now),
                      "exp": _ts(now) + LOGOUT_TOKEN_TTL, "jti": secrets.token_urlsafe(16), "sub": r.user_id,
                      "sid": self.svc.sid(r.session_id), "events": {BACKCHANNEL_EVENT: {}}}
            token = self.svc.sign(ws, claims, typ="logout+jwt")
            url = r.backchannel_logout_uri
            self.dispatch(lambda url=url, token=token: self.post(url, token))
            self.svc.audit("oidc.backchannel_logout", ws.id, actor_id=r.user_id, client_id=r.client_id)


def install(hub, listener: BackchannelLogout) -> None:
    """Call ``listener.session_ended`` after any of the hub's sessions end (sign-out, End, End all, password or
    2FA change, "This wasn't me", SCIM deprovisioning): ``SessionManager.end_listeners``."""
    listeners = hub.sessions.end_listeners
    if not any(getattr(fn, "__self__", None) is listener for fn in listeners):
        listeners.append(listener.notify)
