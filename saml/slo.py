"""SAML Single Logout (HTTP-Redirect and HTTP-POST), plain Python.

* Every SSO records the SP, NameID and SessionIndex it gave out in the idhub session (``SamlSessionParticipant``).
* SP-initiated: a signed LogoutRequest ends the idhub session it names, the other SPs of that session are sent
  LogoutRequests one after another through the browser (front-channel), and the SP gets a signed LogoutResponse.
* IdP-initiated (the user signs out of idhub): the same chain of LogoutRequests, ending on the sign-in page.
* A session ended without its browser: SOAP LogoutRequests (back-channel) to the SPs that have a SOAP endpoint.

The chain's state lives in the one-time store under an unguessable handle, which travels as our RelayState; each
hop's LogoutResponse must come from the SP it went to, answer our request ID, and be signed when the SP has a
certificate. Each state is consumed atomically, so a response cannot be replayed to skip or repeat a hop.

Limits (what an operator should know):

* Front-channel logout (HTTP-Redirect, HTTP-POST) needs the user's browser: idhub can only ask the browser to
  carry each LogoutRequest. When a session ends without that browser — "End" or "End all sessions" from another
  device, a password or 2FA change, an admin disabling the account, SCIM deprovisioning (``active: false`` or
  DELETE) — an SP that has only a front-channel SingleLogoutService cannot be told: its own session for the
  user lives on until it expires, and idhub records ``saml.slo.not_propagated`` naming the SP. Such an SP should
  keep its sessions short, or publish a SOAP SingleLogoutService. (``idhub apply`` deactivating a user installs
  this listener too, see ``idp.cli._session_end_listeners``.)
* An SP whose metadata has a SOAP SingleLogoutService (``slo_soap_url``) is told over the back channel: idhub
  POSTs a signed LogoutRequest from the server (5 s timeout, never retried) and audits the outcome as
  ``saml.slo.backchannel`` (success or the error). With the browser present, an SP that also has a front-channel
  endpoint gets the front channel instead (so its browser cookies go too), and an SP with SOAP only gets SOAP.
  SOAP endpoints come from SP metadata only (``metadata_xml``/``metadata_file``/``metadata_url``). For an SP
  registered over the admin API or console (``app_settings.registered_via: api``) the POST goes through
  ``idp.netfetch`` (internal addresses refused unless ``IDHUB_OUTBOUND_ALLOW_CIDRS`` allows them, pinned to the
  checked address, no redirects); a refusal is audited the same way, with the reason.
* Even with the browser, the chain is best effort: the user can close the tab or an SP can fail to answer; the
  remaining SPs are then not told (the final LogoutResponse says PartialLogout when an SP answered with an error).
* A session that times out (idle or absolute lifetime) is ended when its browser next comes back
  (``SessionManager.load``), and its SPs are told then, as above; until then nothing is sent.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import urllib.request
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import quote

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from lxml import etree
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from idp.models import SessionRow, Workspace
from idp.netfetch import FetchError
from saml.config import NAMEID_PERSISTENT, NAMEID_TRANSIENT, guarded
from saml.keys import private_key
from saml.models import SamlServiceProvider, SamlSessionParticipant
from saml.xml import (
    BINDING_POST,
    BINDING_REDIRECT,
    NS,
    RSA_SHA256,
    SOAP_ENV,
    XmlError,
    b64decode,
    deflate,
    inflate,
    parse,
    sign,
    text_of,
    valid_id,
    verify,
)

SAMLP = "{" + NS["samlp"] + "}"
SAML = "{" + NS["saml"] + "}"
STATUS_SUCCESS = "urn:oasis:names:tc:SAML:2.0:status:Success"
STATUS_PARTIAL_LOGOUT = "urn:oasis:names:tc:SAML:2.0:status:PartialLogout"
STATE_TTL = 600  # a logout chain has ten minutes to come back from each SP
MAX_RELAY_STATE = 80
LOGOUT_REQUEST_TTL = timedelta(minutes=5)
SOAP_TIMEOUT = 5  # seconds
MAX_SOAP_ANSWER = 64 * 1024


class SloError(Exception):
    """A logout message we refuse: the browser sees an error page, nothing is sent anywhere."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@dataclass
class SamlMessage:
    """A message for the browser to carry to an SP: ``redirect_url`` (HTTP-Redirect, the query signed) or a form
    posting ``field`` = ``value`` (base64 XML, signed inside) and RelayState to ``url`` (HTTP-POST)."""

    url: str
    binding: str
    field: str
    value: str = ""
    relay_state: str | None = None
    redirect_url: str = ""


@dataclass
class Incoming:
    kind: str  # "LogoutRequest" or "LogoutResponse"
    sp: SamlServiceProvider
    root: etree._Element
    relay_state: str | None


def _now_str(dt) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def new_id() -> str:
    return "_" + secrets.token_hex(20)


# ---- participants ---------------------------------------------------------------------------------
def record_participant(db, *, workspace_id: str, session_id: str, sp_id: str, name_id: str, nameid_format: str,
                       session_index: str) -> None:
    """Remember that ``sp_id`` holds ``session_index`` in the session (the latest NameID wins)."""
    row = db.scalar(select(SamlSessionParticipant).where(SamlSessionParticipant.session_id == session_id,
                                                         SamlSessionParticipant.sp_id == sp_id))
    if row is not None:
        if row.name_id != name_id or row.nameid_format != nameid_format:
            row.name_id, row.nameid_format = name_id, nameid_format
            db.commit()
        return
    db.add(SamlSessionParticipant(workspace_id=workspace_id, session_id=session_id, sp_id=sp_id, name_id=name_id,
                                  nameid_format=nameid_format, session_index=session_index))
    try:
        db.commit()
    except IntegrityError:  # the same session, two tabs: one row is enough
        db.rollback()


def participants(db, session_ids) -> list[SamlSessionParticipant]:
    ids = [s for s in session_ids if s]
    if not ids:
        return []
    return list(db.scalars(select(SamlSessionParticipant).where(SamlSessionParticipant.session_id.in_(ids))
                           .order_by(SamlSessionParticipant.created_at, SamlSessionParticipant.id)))


SOAP_ACTION = '"http://www.oasis-open.org/committees/security"'


def _soap_post(url: str, envelope: bytes, *, guarded: bool = False) -> bytes:
    """POST a SOAP message to an SP's http(s) SingleLogoutService; at most MAX_SOAP_ANSWER bytes of answer.

    ``guarded`` (an SP registered over the admin API or console): through ``idp.netfetch`` — resolved once, refused
    when the host is loopback, private, link-local, … outside ``IDHUB_OUTBOUND_ALLOW_CIDRS`` (an
    ``idp.netfetch.FetchError`` naming ``slo_soap_url``), connected to the checked address, no redirects."""
    if guarded:
        from idp import netfetch

        return netfetch.post(url, envelope, field="slo_soap_url", content_type="text/xml; charset=utf-8",
                             timeout=SOAP_TIMEOUT, limit=MAX_SOAP_ANSWER, accept="text/xml",
                             headers={"SOAPAction": SOAP_ACTION})
    req = urllib.request.Request(url, data=envelope, method="POST", headers={  # noqa: S310 (checked http(s))
        "Content-Type": "text/xml; charset=utf-8", "SOAPAction": SOAP_ACTION})
    with urllib.request.urlopen(req, timeout=SOAP_TIMEOUT) as resp:  # noqa: S310
        body = resp.read(MAX_SOAP_ANSWER + 1)
    if len(body) > MAX_SOAP_ANSWER:
        raise XmlError("answer too large")
    return body


class SingleLogout:
    def __init__(self, idp):
        self.idp = idp
        self.hub = idp.hub
        self.post = _soap_post
        self.dispatch = lambda fn: threading.Thread(target=fn, daemon=True).start()

    @property
    def store(self):
        return self.hub.stores.one_time

    # ---- session end -----------------------------------------------------------------------------
    def session_ended(self, session_ids, reason: str) -> None:
        """Session-end listener: the session's participant records go. An SP the front-channel chain cannot
        reach — the session ended without its browser (End session, End all, password change, deprovisioning),
        or the SP has no browser SingleLogoutService — gets a back-channel (SOAP) LogoutRequest when its metadata
        has a SOAP SingleLogoutService; otherwise it is named in the audit log (``saml.slo.not_propagated``):
        front-channel logout cannot reach an SP without the browser (see the module docstring's limits)."""
        with self.hub.db() as db:
            rows = participants(db, session_ids)
            if not rows:
                return
            sps = {sp.id: sp for sp in db.scalars(select(SamlServiceProvider).where(
                SamlServiceProvider.id.in_({r.sp_id for r in rows})))}
            db.execute(delete(SamlSessionParticipant).where(SamlSessionParticipant.id.in_([r.id for r in rows])))
            db.commit()
        # With the browser here (sign-out, SP-initiated logout) the front-channel chain, already planned, reaches
        # the SPs with a browser SingleLogoutService; the others are reached over SOAP when they have it.
        interactive = reason in ("signed_out", "saml_slo")
        rows = [r for r in rows if not (interactive and sps.get(r.sp_id) is not None and sps[r.sp_id].slo_url)]
        if not rows:
            return
        with self.hub.db() as db:
            workspaces = {w.id: w for w in db.scalars(select(Workspace).where(
                Workspace.id.in_({r.workspace_id for r in rows})))}
        for r in rows:
            sp = sps.get(r.sp_id)
            if sp is None:
                continue
            if sp.slo_soap_url and r.workspace_id in workspaces:
                hop = {"n": r.name_id, "f": r.nameid_format, "i": r.session_index}
                ws = workspaces[r.workspace_id]
                self.dispatch(lambda ws=ws, sp=sp, hop=hop: self.backchannel(ws, sp, hop))
            else:
                self.hub.audit.record("saml.slo.not_propagated", workspace_id=r.workspace_id,
                                      data={"sp": sp.entity_id, "reason": reason})

    def app_lost(self, ws_id: str, user_id: str, app, why: str) -> None:
        """``hub.app_access``' revoker for a SAML app a user may no longer use (``apps[].assigned_groups``): the
        user's idhub sessions stay, but this SP's participation in them ends — an SP with a SOAP
        SingleLogoutService gets a back-channel LogoutRequest for each of them (as when a session ends without its
        browser); one without is named in the audit log (``saml.slo.not_propagated``) and refuses the next SSO."""
        with self.hub.db() as db:
            sp = db.scalar(select(SamlServiceProvider).where(SamlServiceProvider.workspace_id == ws_id,
                                                             SamlServiceProvider.entity_id == app.key))
            if sp is None:
                return
            rows = list(db.scalars(select(SamlSessionParticipant).join(
                SessionRow, SessionRow.id == SamlSessionParticipant.session_id).where(
                SessionRow.user_id == user_id, SamlSessionParticipant.sp_id == sp.id)))
            if not rows:
                return
            ws = db.get(Workspace, ws_id)
            db.execute(delete(SamlSessionParticipant).where(SamlSessionParticipant.id.in_([r.id for r in rows])))
            db.commit()
        for r in rows:
            if sp.slo_soap_url and ws is not None:
                hop = {"n": r.name_id, "f": r.nameid_format, "i": r.session_index}
                self.dispatch(lambda sp=sp, hop=hop: self.backchannel(ws, sp, hop))
            else:
                self.hub.audit.record("saml.slo.not_propagated", workspace_id=ws_id,
                                      data={"sp": sp.entity_id, "reason": why})

    # ---- incoming messages -----------------------------------------------------------------------
    def read(self, ws, *, binding: str, params: dict, raw_query: bytes) -> Incoming:
        """A LogoutRequest or LogoutResponse from a registered SP, its signature checked (HTTP-Redirect: the
        query; HTTP-POST: the enveloped XML signature). ``params`` holds single values (repeats refused before)."""
        has_req, has_resp = bool(params.get("SAMLRequest")), bool(params.get("SAMLResponse"))
        if has_req == has_resp:
            raise SloError("The request carries no SAML message (or two).")
        field = "SAMLRequest" if has_req else "SAMLResponse"
        relay_state = params.get("RelayState")
        if relay_state is not None and len(relay_state.encode("utf-8", "surrogatepass")) > MAX_RELAY_STATE:
            raise SloError("The RelayState is longer than 80 bytes.")
        try:
            raw = b64decode(params[field])
            if binding == BINDING_REDIRECT:
                raw = inflate(raw)
            root = parse(raw)
            issuer = text_of(root.find("saml:Issuer", NS))
        except XmlError as exc:
            raise SloError(f"The SAML message could not be read ({exc}).") from None
        kind = "LogoutRequest" if has_req else "LogoutResponse"
        if root.tag != SAMLP + kind or root.get("Version") != "2.0":
            raise SloError(f"The message is not a SAML 2.0 {kind}.")
        sp = self.idp.sp_by_entity(ws.id, issuer)
        if sp is None:
            raise SloError("The app that sent this message is not registered in this workspace.")
        if not sp.certificate or not sp.slo_url:
            raise SloError("Single logout is not set up for this app.")
        # Signed, always (else any site could sign users out or forge a hop of the chain).
        if binding == BINDING_REDIRECT:
            if params.get("Signature") is None:
                raise SloError("Logout messages must be signed, and this one is not signed.")
            try:
                self.idp._check_redirect_signature(sp, raw_query, params.get("SigAlg"), params["Signature"],
                                                   field=field.encode())
            except Exception as exc:  # SamlRequestError: the same words
                raise SloError(getattr(exc, "message", "The message's signature is not valid.")) from None
        else:
            if root.find("ds:Signature", NS) is None:
                raise SloError("Logout messages must be signed, and this one is not signed.")
            if not verify(root, sp.certificate):
                raise SloError("The message's signature is not valid.")
        if not valid_id(root.get("ID")):
            raise SloError("The message has no valid ID.")
        destination = root.get("Destination")
        if destination is not None and destination != self.idp.slo_url(ws):
            raise SloError("The message was meant for another identity provider.")
        return Incoming(kind=kind, sp=sp, root=root, relay_state=relay_state)

    def sessions_named(self, ws, incoming: Incoming, browser_session_id: str | None) -> list[str]:
        """The idhub sessions a LogoutRequest names: by SessionIndex (ours, per SP), or without one, the browser's
        session if this SP holds it under the same NameID."""
        root = incoming.root
        try:
            name_id = text_of(root.find("saml:NameID", NS))
            indexes = [text_of(el) for el in root.findall("samlp:SessionIndex", NS)][:20]
        except XmlError:
            raise SloError("The request's NameID or SessionIndex is not valid.") from None
        if not name_id:
            raise SloError("The request names no user (NameID).")
        not_after = root.get("NotOnOrAfter")
        if not_after is not None and not_after < _now_str(self.hub.clock()):
            raise SloError("The request has expired.")
        with self.hub.db() as db:
            q = select(SamlSessionParticipant.session_id, SamlSessionParticipant.name_id).where(
                SamlSessionParticipant.workspace_id == ws.id, SamlSessionParticipant.sp_id == incoming.sp.id)
            if indexes:
                rows = db.execute(q.where(SamlSessionParticipant.session_index.in_(indexes))).all()
            elif browser_session_id:
                rows = db.execute(q.where(SamlSessionParticipant.session_id == browser_session_id)).all()
            else:
                rows = []
        return sorted({r.session_id for r in rows if secrets.compare_digest(r.name_id.encode(), name_id.encode())})

    # ---- the chain ---------------------------------------------------------------------------------
    def plan(self, ws, session_ids, *, skip_sp: str | None = None, final: dict | None = None) -> str | None:
        """Store a chain for the SPs (with a SingleLogoutService) of these sessions; its handle, or None when
        there is nothing to do (and no final response)."""
        with self.hub.db() as db:
            rows = participants(db, session_ids)
            sps = {sp.id: sp for sp in db.scalars(select(SamlServiceProvider).where(
                SamlServiceProvider.id.in_({r.sp_id for r in rows})))} if rows else {}
        queue, seen = [], set()
        for r in rows:
            sp = sps.get(r.sp_id)
            if sp is None or sp.id == skip_sp or not sp.slo_url or (r.session_id, r.sp_id) in seen:
                continue
            seen.add((r.session_id, r.sp_id))
            queue.append({"sp": r.sp_id, "n": r.name_id, "f": r.nameid_format, "i": r.session_index})
        if not queue and final is None:
            return None
        handle = secrets.token_urlsafe(24)
        self._save(handle, {"w": ws.id, "q": queue, "fin": final, "out": None, "partial": False})
        return handle

    def _save(self, handle: str, state: dict) -> None:
        self.store.put("saml-slo:" + handle, json.dumps(state), STATE_TTL)

    def next_step(self, ws, handle: str) -> SamlMessage | None:
        """The next message of the chain (a LogoutRequest to the next SP, or the final LogoutResponse), or None
        when the chain is done (the browser goes to the sign-in page)."""
        raw = self.store.consume("saml-slo:" + handle) if handle and len(handle) <= 64 else None
        state = json.loads(raw) if raw else None
        if state is None or state.get("w") != ws.id:
            return None
        return self._advance(ws, handle, state)

    def _advance(self, ws, handle: str, state: dict) -> SamlMessage | None:
        while state["q"]:
            hop = state["q"].pop(0)
            sp = self.idp.sp(hop["sp"])
            if sp is None or not sp.slo_url:
                continue
            request_id, msg = self.logout_request(ws, sp, hop, relay_state=handle)
            state["out"] = {"sp": sp.id, "id": request_id}
            self._save(handle, state)
            self.idp.audit("saml.slo.request_sent", ws, sp=sp.entity_id)
            return msg
        fin = state.get("fin")
        if fin:
            sp = self.idp.sp(fin["sp"])
            if sp is not None and sp.slo_url:
                status = (STATUS_SUCCESS, STATUS_PARTIAL_LOGOUT) if state.get("partial") else (STATUS_SUCCESS,)
                return self.logout_response(ws, sp, fin["id"], fin.get("r"), status)
        return None

    def response_received(self, ws, incoming: Incoming) -> SamlMessage | None:
        """A LogoutResponse of a hop: it must answer the request we sent to that SP in this chain."""
        handle = incoming.relay_state or ""
        raw = self.store.consume("saml-slo:" + handle) if handle and len(handle) <= 64 else None
        state = json.loads(raw) if raw else None
        out = state.get("out") if state else None
        if state is None or state.get("w") != ws.id or not out:
            raise SloError("This logout response does not belong to a logout in progress.")
        if out["sp"] != incoming.sp.id or incoming.root.get("InResponseTo") != out["id"]:
            raise SloError("This logout response does not answer our request.")
        code = incoming.root.find("samlp:Status/samlp:StatusCode", NS)
        ok = code is not None and code.get("Value") == STATUS_SUCCESS
        if not ok:
            state["partial"] = True
        self.idp.audit("saml.slo.response", ws, sp=incoming.sp.entity_id, success=ok)
        state["out"] = None
        return self._advance(ws, handle, state)

    # ---- outgoing messages -----------------------------------------------------------------------
    def logout_request(self, ws, sp, hop: dict, relay_state: str | None) -> tuple[str, SamlMessage]:
        req_id, req, issuer = self._logout_request_element(ws, sp, hop, sp.slo_url)
        return req_id, self._message(ws, sp, req, issuer, "SAMLRequest", relay_state)

    def _logout_request_element(self, ws, sp, hop: dict, destination: str, prefixes=("samlp", "saml")):
        now = self.hub.clock()
        req = etree.Element(SAMLP + "LogoutRequest", nsmap={prefixes[0]: NS["samlp"], prefixes[1]: NS["saml"]})
        req_id = new_id()
        req.set("ID", req_id)
        req.set("Version", "2.0")
        req.set("IssueInstant", _now_str(now))
        req.set("Destination", destination)
        req.set("NotOnOrAfter", _now_str(now + LOGOUT_REQUEST_TTL))
        issuer = etree.SubElement(req, SAML + "Issuer")
        issuer.text = self.idp.entity_id(ws)
        name_id = etree.SubElement(req, SAML + "NameID", Format=hop["f"])
        if hop["f"] in (NAMEID_PERSISTENT, NAMEID_TRANSIENT):
            name_id.set("NameQualifier", self.idp.entity_id(ws))
            name_id.set("SPNameQualifier", sp.entity_id)
        name_id.text = hop["n"]
        etree.SubElement(req, SAMLP + "SessionIndex").text = hop["i"]
        return req_id, req, issuer

    # ---- back-channel (SOAP) -----------------------------------------------------------------------
    def soap_logout_request(self, ws, sp, hop: dict) -> tuple[str, bytes]:
        """A signed LogoutRequest in a SOAP envelope for the SP's SOAP SingleLogoutService."""
        # pysaml2 lifts the message out of the envelope with ElementTree, which renames the prefixes to ns0, ns1,
        # ns2 in document order before it checks the signature; prefixes are part of c14n, so we use those names.
        req_id, req, issuer = self._logout_request_element(ws, sp, hop, sp.slo_soap_url, prefixes=("ns0", "ns1"))
        key_pem, cert = self.idp.keys.signing(ws)
        sign(req, key_pem, cert, after=issuer, ds_prefix="ns2")
        env = etree.Element(f"{{{SOAP_ENV}}}Envelope", nsmap={"soap-env": SOAP_ENV})
        etree.SubElement(env, f"{{{SOAP_ENV}}}Body").append(req)
        return req_id, etree.tostring(env, xml_declaration=True, encoding="UTF-8")

    def backchannel(self, ws, sp, hop: dict) -> None:
        """Send the LogoutRequest, read the SP's LogoutResponse (bounded, hardened parse, signature checked when
        the SP has a certificate), and audit the outcome. Runs in ``dispatch`` (a thread by default)."""
        req_id, envelope = self.soap_logout_request(ws, sp, hop)
        ok, why = False, ""
        try:
            # an SP registered over the admin API or console: through idp.netfetch's checks (a refusal is audited)
            body = self.post(sp.slo_soap_url, envelope, guarded=True) if guarded(sp) else \
                self.post(sp.slo_soap_url, envelope)
            root = parse(body)
            resp = root.find(f"{{{SOAP_ENV}}}Body/samlp:LogoutResponse", NS)
            if root.tag != f"{{{SOAP_ENV}}}Envelope" or resp is None:
                why = "not a SOAP LogoutResponse"
            elif sp.certificate and not verify(resp, sp.certificate):
                why = "signature not valid"
            elif resp.get("InResponseTo") != req_id:
                why = "does not answer our request"
            else:
                code = resp.find("samlp:Status/samlp:StatusCode", NS)
                ok = code is not None and code.get("Value") == STATUS_SUCCESS
                why = "" if ok else (code.get("Value") if code is not None else "no status")
        except XmlError as exc:
            why = f"unreadable answer ({exc})"
        except FetchError as exc:  # refused by idp.netfetch (or failed through it): the field and the reason
            why = str(exc)
        except Exception as exc:  # noqa: BLE001 - an SP that is down must not break anything; it is audited
            why = type(exc).__name__
        self.idp.audit("saml.slo.backchannel", ws, sp=sp.entity_id, success=ok, error=why[:200] or None)

    def logout_response(self, ws, sp, in_response_to: str | None, relay_state: str | None,
                        status: tuple[str, ...] = (STATUS_SUCCESS,)) -> SamlMessage:
        resp = etree.Element(SAMLP + "LogoutResponse", nsmap={"samlp": NS["samlp"], "saml": NS["saml"]})
        resp.set("ID", new_id())
        resp.set("Version", "2.0")
        resp.set("IssueInstant", _now_str(self.hub.clock()))
        resp.set("Destination", sp.slo_url)
        if in_response_to:
            resp.set("InResponseTo", in_response_to)
        issuer = etree.SubElement(resp, SAML + "Issuer")
        issuer.text = self.idp.entity_id(ws)
        code = etree.SubElement(etree.SubElement(resp, SAMLP + "Status"), SAMLP + "StatusCode", Value=status[0])
        for sub in status[1:]:
            code = etree.SubElement(code, SAMLP + "StatusCode", Value=sub)
        return self._message(ws, sp, resp, issuer, "SAMLResponse", relay_state)

    def _message(self, ws, sp, root, issuer, field: str, relay_state: str | None) -> SamlMessage:
        key_pem, cert = self.idp.keys.signing(ws)
        if (sp.slo_binding or BINDING_REDIRECT) == BINDING_POST:
            sign(root, key_pem, cert, after=issuer)
            xml = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
            return SamlMessage(url=sp.slo_url, binding=BINDING_POST, field=field,
                               value=base64.b64encode(xml).decode(), relay_state=relay_state)
        msg = base64.b64encode(deflate(etree.tostring(root))).decode()
        query = f"{field}=" + quote(msg, safe="")
        if relay_state is not None:
            query += "&RelayState=" + quote(relay_state, safe="")
        query += "&SigAlg=" + quote(RSA_SHA256, safe="")
        sig = private_key(key_pem).sign(query.encode(), padding.PKCS1v15(), hashes.SHA256())
        query += "&Signature=" + quote(base64.b64encode(sig).decode(), safe="")
        url = sp.slo_url + ("&" if "?" in sp.slo_url else "?") + query
        return SamlMessage(url=sp.slo_url, binding=BINDING_REDIRECT, field=field, relay_state=relay_state,
                           redirect_url=url)
