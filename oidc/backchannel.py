"""OpenID Connect Back-Channel Logout: when an idhub session ends, every app that received tokens in it gets a
signed logout token, and the session's refresh and access tokens are revoked.

The apps of a session are its participants (``oidc_session_clients``, recorded when an app redeems a code or
refreshes): not its access tokens, which the purge deletes minutes after they expire, while the app may still hold
a refresh token or just an ID token with the session's ``sid``. The session's remaining tokens are also read, so a
session that began before participants were recorded still reaches its apps. The participants go with the session.

``install`` registers it as a session-end listener of the hub's ``SessionManager``.
"""

from __future__ import annotations

import logging
import secrets
import threading
import urllib.request
from urllib.parse import urlencode

from sqlalchemy import delete, select

from idp.models import Workspace
from oidc.models import OidcAccessToken, OidcClient, OidcRefreshToken, OidcSessionClient
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
            found: dict[tuple[str, str], tuple[str, str]] = {}  # (session, client) -> (user, workspace)
            for model in (OidcSessionClient, OidcRefreshToken, OidcAccessToken):
                for r in db.execute(select(model.session_id, model.client_id, model.user_id, model.workspace_id)
                                    .where(model.session_id.in_(ids)).distinct()):
                    if r.user_id:
                        found.setdefault((r.session_id, r.client_id), (r.user_id, r.workspace_id))
            clients = {}
            for ws_id in {w for _, w in found.values()}:
                names = {c for (_, c), (_, w) in found.items() if w == ws_id}
                for c in db.execute(select(OidcClient.client_id, OidcClient.backchannel_logout_uri).where(
                        OidcClient.workspace_id == ws_id, OidcClient.client_id.in_(names))):
                    clients[(ws_id, c.client_id)] = c.backchannel_logout_uri
            workspaces = {w.id: w for w in db.scalars(select(Workspace).where(
                Workspace.id.in_({w for _, w in found.values()})))} if found else {}
        for sid in ids:
            self.svc.revoke_session(sid)
        now = hub.clock()
        for (session_id, client_id), (user_id, ws_id) in sorted(found.items()):
            url = clients.get((ws_id, client_id))
            ws = workspaces.get(ws_id)
            if not url or ws is None:
                continue
            claims = {"iss": self.svc.issuer(ws), "aud": client_id, "iat": _ts(now),
                      "exp": _ts(now) + LOGOUT_TOKEN_TTL, "jti": secrets.token_urlsafe(16), "sub": user_id,
                      "sid": self.svc.sid(session_id), "events": {BACKCHANNEL_EVENT: {}}}
            token = self.svc.sign(ws, claims, typ="logout+jwt")
            self.dispatch(lambda url=url, token=token: self.post(url, token))
            self.svc.audit("oidc.backchannel_logout", ws.id, actor_id=user_id, client_id=client_id)
        with hub.db() as db:  # the session is over: so is the record of its apps
            db.execute(delete(OidcSessionClient).where(OidcSessionClient.session_id.in_(ids))
                       .execution_options(synchronize_session=False))
            db.commit()


def install(hub, listener: BackchannelLogout) -> None:
    """Call ``listener.session_ended`` after any of the hub's sessions end (sign-out, End, End all, password or
    2FA change, "This wasn't me", SCIM deprovisioning): ``SessionManager.end_listeners``."""
    listeners = hub.sessions.end_listeners
    if not any(getattr(fn, "__self__", None) is listener for fn in listeners):
        listeners.append(listener.notify)
