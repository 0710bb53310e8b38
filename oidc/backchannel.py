"""OpenID Connect Back-Channel Logout: when an idhub session ends, every app that received tokens in it gets a
signed logout token, and the session's refresh and access tokens are revoked.

The apps of a session are its participants (``oidc_session_clients``, recorded when an app redeems a code or
refreshes): not its access tokens, which the purge deletes minutes after they expire, while the app may still hold
a refresh token or just an ID token with the session's ``sid``. The session's remaining tokens are also read, so a
session that began before participants were recorded still reaches its apps. The participants go with the session.

The ``backchannel_logout_uri`` of an app registered over the admin API or console (``registered_via: api``, a
workspace admin's choice) is POSTed to through ``idp.netfetch``: resolved once, refused when it is loopback,
private, link-local, … unless ``IDHUB_OUTBOUND_ALLOW_CIDRS`` allows it, connected to the checked address, no
redirects; a refusal or failure is logged and audited (``oidc.backchannel_logout.failed``). Config-file apps keep
a plain POST (logged when it fails). Neither ever undoes the sign-out.

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
from oidc.config import guarded
from oidc.models import OidcAccessToken, OidcClient, OidcRefreshToken, OidcSessionClient
from oidc.provider import BACKCHANNEL_EVENT, OidcService, _ts

log = logging.getLogger("idhub.oidc.backchannel")
LOGOUT_TOKEN_TTL = 120
POST_TIMEOUT = 5
MAX_ANSWER = 65536  # bytes of an app's answer read (through idp.netfetch)


def _post(url: str, logout_token: str, *, guarded: bool = False) -> str | None:
    """POST a logout token to the app's ``backchannel_logout_uri``: None when it was delivered, else why not (also
    logged; an app that is down or refused must not break sign-out). ``guarded`` (a client registered over the
    admin API or console): through ``idp.netfetch`` — resolved once, refused when the host is loopback, private,
    link-local, … outside ``IDHUB_OUTBOUND_ALLOW_CIDRS``, connected to the checked address, no redirects."""
    data = urlencode({"logout_token": logout_token}).encode()
    try:
        if guarded:
            from idp import netfetch

            netfetch.post(url, data, field="backchannel_logout_uri", timeout=POST_TIMEOUT, limit=MAX_ANSWER)
            return None
        req = urllib.request.Request(url, data=data, method="POST",  # noqa: S310 (an operator-configured URL)
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        with urllib.request.urlopen(req, timeout=POST_TIMEOUT) as resp:  # noqa: S310
            resp.read(1024)
        return None
    except Exception as exc:  # noqa: BLE001 - whatever went wrong, the session stays ended; it is logged
        from idp.netfetch import FetchError

        why = str(exc) if isinstance(exc, FetchError) else type(exc).__name__
        log.warning("back-channel logout failed", extra={"error": type(exc).__name__, "reason": why[:200]})
        return why


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
                for c in db.execute(select(OidcClient.client_id, OidcClient.backchannel_logout_uri,
                                           OidcClient.registered_via).where(
                        OidcClient.workspace_id == ws_id, OidcClient.client_id.in_(names))):
                    clients[(ws_id, c.client_id)] = (c.backchannel_logout_uri, guarded(c))
            workspaces = {w.id: w for w in db.scalars(select(Workspace).where(
                Workspace.id.in_({w for _, w in found.values()})))} if found else {}
        for sid in ids:
            self.svc.revoke_session(sid)
        for (session_id, client_id), (user_id, ws_id) in sorted(found.items()):
            url, checked = clients.get((ws_id, client_id), (None, False))
            ws = workspaces.get(ws_id)
            if url and ws is not None:
                self._send(ws, session_id, client_id, user_id, url, checked)
        with hub.db() as db:  # the session is over: so is the record of its apps
            db.execute(delete(OidcSessionClient).where(OidcSessionClient.session_id.in_(ids))
                       .execution_options(synchronize_session=False))
            db.commit()


    def _send(self, ws, session_id: str, client_id: str, user_id: str, url: str, checked: bool, **audit) -> None:
        """Sign a logout token for (session, client) and POST it (off the request, by ``dispatch``)."""
        now = self.svc.hub.clock()
        claims = {"iss": self.svc.issuer(ws), "aud": client_id, "iat": _ts(now),
                  "exp": _ts(now) + LOGOUT_TOKEN_TTL, "jti": secrets.token_urlsafe(16), "sub": user_id,
                  "sid": self.svc.sid(session_id), "events": {BACKCHANNEL_EVENT: {}}}
        token = self.svc.sign(ws, claims, typ="logout+jwt")
        if checked:
            self.dispatch(lambda url=url, token=token, ws_id=ws.id, client_id=client_id, user_id=user_id:
                          self.deliver_checked(ws_id, client_id, user_id, url, token))
        else:
            self.dispatch(lambda url=url, token=token: self.post(url, token))
        self.svc.audit("oidc.backchannel_logout", ws.id, actor_id=user_id, client_id=client_id, **audit)

    def client_logged_out(self, ws_id: str, user_id: str, client_id: str, reason: str) -> int:
        """Log one client out of every session of one user, without ending any idhub session: the user's refresh
        and access tokens of that client are revoked, the client gets a logout token per session it took part in
        (``oidc_session_clients``, or where its tokens were issued), and it is no longer a participant of those
        sessions. The other apps and the idhub sessions are untouched. The number of sessions named."""
        hub = self.svc.hub
        with hub.db() as db:
            sessions: set[str] = set()
            for model in (OidcSessionClient, OidcRefreshToken, OidcAccessToken):
                sessions.update(sid for sid in db.scalars(select(model.session_id).where(
                    model.workspace_id == ws_id, model.user_id == user_id, model.client_id == client_id).distinct())
                    if sid)
            client = db.scalar(select(OidcClient).where(OidcClient.workspace_id == ws_id,
                                                        OidcClient.client_id == client_id))
            ws = db.get(Workspace, ws_id)
            url, checked = (client.backchannel_logout_uri, guarded(client)) if client is not None else (None, False)
        self.svc.revoke_user_client(ws_id, user_id, client_id)
        if url and ws is not None:
            for sid in sorted(sessions):
                self._send(ws, sid, client_id, user_id, url, checked, reason=reason)
        with hub.db() as db:
            db.execute(delete(OidcSessionClient).where(
                OidcSessionClient.workspace_id == ws_id, OidcSessionClient.user_id == user_id,
                OidcSessionClient.client_id == client_id).execution_options(synchronize_session=False))
            db.commit()
        return len(sessions)

    def deliver_checked(self, ws_id: str, client_id: str, user_id: str, url: str, token: str) -> None:
        """The POST for a client registered over the admin API or console (through ``idp.netfetch``); a refusal
        or failure is audited (``oidc.backchannel_logout.failed``, with why) for the workspace's admins, never
        raised: the session is over whatever the app's endpoint does."""
        try:
            error = self.post(url, token, guarded=True)
        except Exception as exc:  # noqa: BLE001 - a stand-in poster; the real one returns why
            error = type(exc).__name__
        if error:
            try:
                self.svc.audit("oidc.backchannel_logout.failed", ws_id, actor_id=user_id, client_id=client_id,
                               error=str(error)[:200])
            except Exception:  # noqa: BLE001 - the audit log is down: the warning above is what is left
                log.warning("back-channel logout failure not audited", exc_info=True)


def install(hub, listener: BackchannelLogout) -> None:
    """Call ``listener.session_ended`` after any of the hub's sessions end (sign-out, End, End all, password or
    2FA change, "This wasn't me", SCIM deprovisioning): ``SessionManager.end_listeners``."""
    listeners = hub.sessions.end_listeners
    if not any(getattr(fn, "__self__", None) is listener for fn in listeners):
        listeners.append(listener.notify)
