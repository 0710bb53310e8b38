"""The SAML identity provider: metadata, AuthnRequest checks and signed Responses. Plain Python, no Flask."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field
from datetime import timedelta
from urllib.parse import unquote_to_bytes

from lxml import etree
from sqlalchemy import and_, bindparam, select

from idp.hub import ACCOUNT_COLUMNS
from idp.invalidation import SAML_APPS, generation
from idp.models import Group, GroupMember, User
from saml.config import (
    NAMEID_EMAIL,
    NAMEID_FORMATS,
    NAMEID_PERSISTENT,
    NAMEID_TRANSIENT,
    NAMEID_UNSPECIFIED,
    find_sp,
)
from saml.keys import METADATA_CACHE, METADATA_VALID, SamlKeys, verify_redirect_signature, xs_duration
from saml.models import SamlServiceProvider
from saml.slo import SingleLogout, record_participant
from saml.xml import (
    BINDING_POST,
    BINDING_REDIRECT,
    NS,
    XmlError,
    b64decode,
    encrypt_assertion,
    inflate,
    parse,
    pem_body,
    sign,
    text_of,
    valid_id,
    verify,
)

RESPONSE_TTL = timedelta(minutes=5)
SP_CACHE_TTL = 5.0  # seconds at most; a change of any SAML app anywhere drops the cache at once (idp.invalidation)
MAX_RELAY_STATE = 80  # bytes (SAML bindings §3.4.3 / §3.5.3)
SAMLP = "{" + NS["samlp"] + "}"
SAML = "{" + NS["saml"] + "}"
MD = "{" + NS["md"] + "}"
DS = "{" + NS["ds"] + "}"
XSI = "{" + NS["xsi"] + "}"

STATUS_SUCCESS = "urn:oasis:names:tc:SAML:2.0:status:Success"
STATUS_REQUESTER = "urn:oasis:names:tc:SAML:2.0:status:Requester"
STATUS_RESPONDER = "urn:oasis:names:tc:SAML:2.0:status:Responder"
STATUS_REQUEST_DENIED = "urn:oasis:names:tc:SAML:2.0:status:RequestDenied"
STATUS_NO_PASSIVE = "urn:oasis:names:tc:SAML:2.0:status:NoPassive"
STATUS_INVALID_NAMEID_POLICY = "urn:oasis:names:tc:SAML:2.0:status:InvalidNameIDPolicy"
STATUS_UNSUPPORTED_BINDING = "urn:oasis:names:tc:SAML:2.0:status:UnsupportedBinding"

AC_PASSWORD = "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport"
AC_TOTP = "urn:oasis:names:tc:SAML:2.0:ac:classes:TimeSyncToken"
AC_SMS = "urn:oasis:names:tc:SAML:2.0:ac:classes:MobileTwoFactorUnregistered"
AC_MFA = "urn:idhub:ac:mfa"
AC_UNSPECIFIED = "urn:oasis:names:tc:SAML:2.0:ac:classes:unspecified"
MFA_METHODS = ("totp", "sms", "backup_codes", "otp", "mfa", "hwk", "swk", "webauthn")

_U, _G, _GM = User.__table__.c, Group.__table__.c, GroupMember.__table__.c
# SamlIdp.account: what an assertion says of the user, a row per group of theirs in the workspace, with the
# columns the policy check needs (Hub.decide's ``account``): one statement for the whole SSO
_USER_AND_GROUPS = (
    select(_U.id, _U.email, _U.name, _U.given_name, _U.family_name, _U.display_name, _G.name.label("group_name"),
           *ACCOUNT_COLUMNS)
    .select_from(User.__table__.outerjoin(GroupMember.__table__, _GM.user_id == _U.id)
                 .outerjoin(Group.__table__, and_(_G.id == _GM.group_id, _G.workspace_id == bindparam("w"))))
    .where(_U.id == bindparam("u"))
)


class SamlRequestError(Exception):
    """An AuthnRequest we refuse. ``reply`` is set when the SP and its ACS are trusted: the error then goes back
    to the SP as a SAML status; otherwise the browser sees an error page and nothing is posted anywhere."""

    def __init__(self, message: str, reply: Pending | None = None, status: tuple[str, ...] = ()):
        super().__init__(message)
        self.message = message
        self.reply = reply
        self.status = status or (STATUS_REQUESTER,)


@dataclass
class Pending:
    """A checked AuthnRequest, waiting for a sign-in. Everything in it came from our own records or was checked."""

    sp_id: str
    acs_index: int
    request_id: str | None = None
    relay_state: str | None = None
    force: bool = False
    passive: bool = False
    nameid_format: str | None = None
    issued: float = 0.0
    extra: dict = field(default_factory=dict)

    def dump(self) -> dict:
        return {"s": self.sp_id, "a": self.acs_index, "i": self.request_id, "r": self.relay_state,
                "f": self.force, "p": self.passive, "n": self.nameid_format, "t": self.issued}

    @classmethod
    def load(cls, d: dict) -> Pending:
        return cls(sp_id=d["s"], acs_index=d["a"], request_id=d["i"], relay_state=d["r"], force=d["f"],
                   passive=d["p"], nameid_format=d["n"], issued=d["t"])


@dataclass
class Outgoing:
    """A SAML message for the browser to POST to the SP's ACS (from our records only)."""

    acs_url: str
    saml_response: str  # base64
    relay_state: str | None


def _now_str(dt) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def new_id() -> str:
    return "_" + secrets.token_hex(20)


class SamlIdp:
    def __init__(self, hub):
        from idp.crypto import derive_key, secret_keys
        from idp.mfa.crypto import SecretBox

        self.hub = hub
        self.keys = SamlKeys(hub, SecretBox(secret_keys(hub.settings), "saml-keys"))
        self._session_key = derive_key(hub.settings.secret_key, "saml-session-index").encode()
        self.slo = SingleLogout(self)
        self._sp_cache: dict = {}
        self._recorded: dict = {}  # (session id, SP id) -> NameID already recorded as a participant

    # ---- addresses ------------------------------------------------------------------------------
    def entity_id(self, ws) -> str:
        return self.hub.url(f"/w/{ws.slug}/saml")

    def sso_url(self, ws) -> str:
        return self.hub.url(f"/w/{ws.slug}/saml/sso")

    def slo_url(self, ws) -> str:
        return self.hub.url(f"/w/{ws.slug}/saml/slo")

    def audit(self, type_: str, ws, actor_id: str | None = None, sp: str | None = None, **data):
        self.hub.audit.record(type_, workspace_id=ws.id, actor_id=actor_id, data={"sp": sp, **data})

    # ---- metadata -------------------------------------------------------------------------------
    def metadata(self, ws) -> bytes:
        key_pem, cert = self.keys.signing(ws)
        root = etree.Element(MD + "EntityDescriptor", nsmap={"md": NS["md"], "ds": NS["ds"]})
        root.set("ID", new_id())
        root.set("entityID", self.entity_id(ws))
        # validUntil and cacheDuration bound how long an SP may use this copy: a staged signing key is published
        # longer than both before it signs (saml.keys.MIN_PUBLISH).
        root.set("validUntil", _now_str(self.hub.clock() + METADATA_VALID))
        root.set("cacheDuration", xs_duration(METADATA_CACHE))
        idp = etree.SubElement(root, MD + "IDPSSODescriptor")
        idp.set("protocolSupportEnumeration", NS["samlp"])
        idp.set("WantAuthnRequestsSigned", "false")
        for published in self.keys.published(ws):  # two during a key rollover
            kd = etree.SubElement(idp, MD + "KeyDescriptor", use="signing")
            ki = etree.SubElement(kd, DS + "KeyInfo")
            etree.SubElement(etree.SubElement(ki, DS + "X509Data"), DS + "X509Certificate").text = pem_body(published)
        for binding in (BINDING_REDIRECT, BINDING_POST):
            etree.SubElement(idp, MD + "SingleLogoutService", Binding=binding, Location=self.slo_url(ws))
        for fmt in NAMEID_FORMATS:
            etree.SubElement(idp, MD + "NameIDFormat").text = fmt
        for binding in (BINDING_REDIRECT, BINDING_POST):
            etree.SubElement(idp, MD + "SingleSignOnService", Binding=binding, Location=self.sso_url(ws))
        sign(root, key_pem, cert)
        return etree.tostring(root, xml_declaration=True, encoding="UTF-8")

    # ---- AuthnRequest ---------------------------------------------------------------------------
    def parse_authn_request(self, ws, *, binding: str, saml_request: str | None, relay_state: str | None,
                            raw_query: bytes = b"", sig_alg: str | None = None,
                            signature: str | None = None, now_ts: float = 0.0) -> tuple[SamlServiceProvider, Pending]:
        if not saml_request:
            raise SamlRequestError("The request has no SAMLRequest.")
        if relay_state is not None and len(relay_state.encode("utf-8", "surrogatepass")) > MAX_RELAY_STATE:
            raise SamlRequestError("The RelayState is longer than 80 bytes.")
        try:
            raw = b64decode(saml_request)
            if binding == BINDING_REDIRECT:
                raw = inflate(raw)
            root = parse(raw)
        except XmlError as exc:
            raise SamlRequestError(f"The SAML request could not be read ({exc}).") from None
        if root.tag != SAMLP + "AuthnRequest" or root.get("Version") != "2.0":
            raise SamlRequestError("The message is not a SAML 2.0 AuthnRequest.")
        try:
            issuer = text_of(root.find("saml:Issuer", NS))
        except XmlError:
            issuer = ""
        sp = self.sp_by_entity(ws.id, issuer)
        if sp is None:
            raise SamlRequestError("The app that sent this request is not registered in this workspace.")
        # The signature, before anything in the request is trusted (our ACS choice included).
        signed = False
        if binding == BINDING_REDIRECT and signature is not None:
            signed = self._check_redirect_signature(sp, raw_query, sig_alg, signature)
        elif binding == BINDING_POST and root.find("ds:Signature", NS) is not None:
            signed = bool(sp.certificate) and verify(root, sp.certificate)
            if not signed:
                raise SamlRequestError("The request's signature is not valid.")
        if sp.require_signed_requests and not signed:
            raise SamlRequestError("This app must sign its requests, and this one is not signed.")
        req_id = root.get("ID")
        if not valid_id(req_id):
            raise SamlRequestError("The request has no valid ID.")
        destination = root.get("Destination")
        if destination is not None and destination != self.sso_url(ws):
            raise SamlRequestError("The request was meant for another identity provider.")
        acs_index = self._pick_acs(sp, root)
        pending = Pending(sp_id=sp.id, acs_index=acs_index, request_id=req_id, relay_state=relay_state,
                          force=root.get("ForceAuthn") in ("true", "1"), passive=root.get("IsPassive") in ("true", "1"),
                          issued=now_ts)
        binding_wanted = root.get("ProtocolBinding")
        if binding_wanted is not None and binding_wanted != BINDING_POST:
            raise SamlRequestError("Only the HTTP-POST binding is supported for responses.", reply=pending,
                                   status=(STATUS_RESPONDER, STATUS_UNSUPPORTED_BINDING))
        policy = root.find("samlp:NameIDPolicy", NS)
        fmt = policy.get("Format") if policy is not None else None
        if fmt and fmt != NAMEID_UNSPECIFIED:
            if fmt not in NAMEID_FORMATS:
                raise SamlRequestError("The requested NameID format is not supported.", reply=pending,
                                       status=(STATUS_REQUESTER, STATUS_INVALID_NAMEID_POLICY))
            pending.nameid_format = fmt
        return sp, pending

    def _check_redirect_signature(self, sp, raw_query: bytes, sig_alg, signature,
                                  field: bytes = b"SAMLRequest") -> bool:
        if not sp.certificate:
            raise SamlRequestError("The request is signed, but the app has no certificate registered.")
        # The signed octets are the query parameters exactly as sent, in this order (bindings §3.4.4.1).
        parts = {}
        for item in raw_query.split(b"&"):
            k, _, v = item.partition(b"=")
            if k in (field, b"RelayState", b"SigAlg"):
                if k in parts:
                    raise SamlRequestError("A parameter of the request is repeated.")
                parts[k] = v
        signed = b"&".join(k + b"=" + parts[k] for k in (field, b"RelayState", b"SigAlg") if k in parts)
        try:
            sig = base64.b64decode(signature.encode("ascii"), validate=True)
        except (ValueError, UnicodeEncodeError):
            sig = b""
        if b"SigAlg" not in parts or unquote_to_bytes(parts[b"SigAlg"]).decode("latin-1") != sig_alg:
            raise SamlRequestError("The request's signature is not valid.")
        if not verify_redirect_signature(sp.certificate, signed, sig_alg or "", sig):
            raise SamlRequestError("The request's signature is not valid.")
        return True

    def _pick_acs(self, sp, root) -> int:
        url = root.get("AssertionConsumerServiceURL")
        index = root.get("AssertionConsumerServiceIndex")
        if url is not None:
            for i, acs in enumerate(sp.acs):
                if acs["url"] == url:
                    return i
            raise SamlRequestError("The request asks for a response address that is not registered for this app.")
        if index is not None:
            for i, acs in enumerate(sp.acs):
                if str(acs["index"]) == index:
                    return i
            raise SamlRequestError("The request asks for a response address that is not registered for this app.")
        return default_acs(sp)

    # ---- service providers, cached briefly per process ------------------------------------------------
    def _cached(self, key, load):
        """An SP row (detached) from the cache, or loaded. Entries live SP_CACHE_TTL seconds, and no longer than
        the next change of any SAML app on any node (``idp.invalidation``); misses are not cached (a newly
        registered app works at once)."""
        now = time.monotonic()
        gen = generation(SAML_APPS)  # read before the load: a change meanwhile makes this entry stale
        hit = self._sp_cache.get(key)
        if hit is not None and hit[0] > now and hit[1] == gen:
            return hit[2]
        with self.hub.db() as db:
            row = load(db)
        if row is not None:
            if len(self._sp_cache) > 4096:
                self._sp_cache.clear()
            self._sp_cache[key] = (now + SP_CACHE_TTL, gen, row)
        return row

    def launchable(self, ws) -> list[SamlServiceProvider]:
        """The workspace's apps that may be opened from idhub (IdP-initiated SSO), by name."""
        with self.hub.db() as db:
            return list(db.scalars(select(SamlServiceProvider).where(
                SamlServiceProvider.workspace_id == ws.id, SamlServiceProvider.idp_initiated.is_(True),
                SamlServiceProvider.slug != "").order_by(SamlServiceProvider.name, SamlServiceProvider.slug)))

    def sp(self, sp_id: str) -> SamlServiceProvider | None:
        return self._cached(("id", sp_id), lambda db: db.get(SamlServiceProvider, sp_id))

    def sp_by_entity(self, ws_id: str, entity_id: str | None) -> SamlServiceProvider | None:
        if not entity_id or not isinstance(entity_id, str) or len(entity_id) > 1024:
            return None
        return self._cached(("entity", ws_id, entity_id), lambda db: find_sp(db, ws_id, entity_id))

    def sp_for_app(self, ws_id: str, app: str) -> SamlServiceProvider | None:
        """By slug, else by entity ID (the per-app policy look-up)."""
        if not app or len(app) > 1024:
            return None
        return self._cached(("app", ws_id, app), lambda db: db.scalar(select(SamlServiceProvider).where(
            SamlServiceProvider.workspace_id == ws_id, SamlServiceProvider.slug == app)) or find_sp(db, ws_id, app))

    # ---- Response -------------------------------------------------------------------------------
    def _response_root(self, ws, sp, pending: Pending, status: tuple[str, ...], now=None):
        now = self.hub.clock() if now is None else now
        resp = etree.Element(SAMLP + "Response", nsmap={"samlp": NS["samlp"], "saml": NS["saml"]})
        resp.set("ID", new_id())
        resp.set("Version", "2.0")
        resp.set("IssueInstant", _now_str(now))
        resp.set("Destination", sp.acs[pending.acs_index]["url"])
        if pending.request_id:
            resp.set("InResponseTo", pending.request_id)
        issuer = etree.SubElement(resp, SAML + "Issuer")
        issuer.text = self.entity_id(ws)
        st = etree.SubElement(resp, SAMLP + "Status")
        code = etree.SubElement(st, SAMLP + "StatusCode", Value=status[0])
        for sub in status[1:]:
            code = etree.SubElement(code, SAMLP + "StatusCode", Value=sub)
        return resp, issuer

    def _out(self, resp, sp, pending) -> Outgoing:
        xml = etree.tostring(resp, xml_declaration=True, encoding="UTF-8")
        return Outgoing(acs_url=sp.acs[pending.acs_index]["url"], saml_response=base64.b64encode(xml).decode(),
                        relay_state=pending.relay_state)

    def error_response(self, ws, sp, pending: Pending, status: tuple[str, ...], message: str = "") -> Outgoing:
        resp, issuer = self._response_root(ws, sp, pending, status)
        if message:
            etree.SubElement(resp.find("samlp:Status", NS), SAMLP + "StatusMessage").text = message[:200]
        key_pem, cert = self.keys.signing(ws)
        sign(resp, key_pem, cert, after=issuer)
        self.audit("saml.sso.error", ws, sp=sp.entity_id, status=list(status))
        return self._out(resp, sp, pending)

    def account(self, ws, user_id: str) -> list:
        """The user, a row per group of theirs in ``ws`` (at least one row; none when there is no such user)."""
        with self.hub.read() as conn:  # no transaction around one read (PostgreSQL: one round trip, not three)
            return conn.execute(_USER_AND_GROUPS, {"u": user_id, "w": ws.id}).all()

    def success_response(self, ws, sp, pending: Pending, session, rows: list | None = None) -> Outgoing:
        """The signed Response for ``session``'s user; ``rows``: their ``account`` rows, if already read."""
        now = self.hub.clock()
        if rows is None:
            rows = self.account(ws, session.user_id)
        if not rows:  # deleted while its session was being checked (its sessions end with it)
            return self.error_response(ws, sp, pending, (STATUS_RESPONDER, STATUS_REQUEST_DENIED),
                                       "The account no longer exists.")
        user = rows[0]
        fmt = pending.nameid_format or sp.nameid_format
        if fmt == NAMEID_EMAIL and not user.email:  # a username-only account: no NameID to give, not an empty one
            return self.error_response(ws, sp, pending, (STATUS_RESPONDER, STATUS_INVALID_NAMEID_POLICY),
                                       "The account has no email address, which this app identifies people by.")
        groups = sorted({r.group_name for r in rows if r.group_name is not None})
        resp, resp_issuer = self._response_root(ws, sp, pending, (STATUS_SUCCESS,), now)
        acs_url = sp.acs[pending.acs_index]["url"]
        issued, expires = _now_str(now), _now_str(now + RESPONSE_TTL)
        a = etree.SubElement(resp, SAML + "Assertion", nsmap={"xs": NS["xs"], "xsi": NS["xsi"]})
        a.set("ID", new_id())
        a.set("Version", "2.0")
        a.set("IssueInstant", issued)
        a_issuer = etree.SubElement(a, SAML + "Issuer")
        a_issuer.text = self.entity_id(ws)
        subject = etree.SubElement(a, SAML + "Subject")
        name_id = etree.SubElement(subject, SAML + "NameID", Format=fmt)
        if fmt in (NAMEID_PERSISTENT, NAMEID_TRANSIENT):
            name_id.set("NameQualifier", self.entity_id(ws))
            name_id.set("SPNameQualifier", sp.entity_id)
        name_id.text = self.name_id(ws, user, sp, fmt)
        sc = etree.SubElement(subject, SAML + "SubjectConfirmation", Method="urn:oasis:names:tc:SAML:2.0:cm:bearer")
        scd = etree.SubElement(sc, SAML + "SubjectConfirmationData", NotOnOrAfter=expires, Recipient=acs_url)
        if pending.request_id:
            scd.set("InResponseTo", pending.request_id)
        cond = etree.SubElement(a, SAML + "Conditions", NotBefore=_now_str(now - timedelta(seconds=30)),
                                NotOnOrAfter=expires)
        etree.SubElement(etree.SubElement(cond, SAML + "AudienceRestriction"), SAML + "Audience").text = sp.entity_id
        authn_time = session.auth_time or session.created_at
        session_index = self.session_index(session.id, sp.entity_id)
        stmt = etree.SubElement(a, SAML + "AuthnStatement", AuthnInstant=_now_str(authn_time),
                                SessionIndex=session_index)
        if session.expires_at is not None:
            stmt.set("SessionNotOnOrAfter", _now_str(session.expires_at))
        ctx = etree.SubElement(stmt, SAML + "AuthnContext")
        etree.SubElement(ctx, SAML + "AuthnContextClassRef").text = authn_context(session.amr)
        values = {"email": [user.email] if user.email else [], "name": [user.name] if user.name else [],
                  "groups": groups,
                  "id": [user.id], "given_name": [user.given_name] if user.given_name else [],
                  "family_name": [user.family_name] if user.family_name else [],
                  "display_name": [user.display_name] if user.display_name else []}
        if sp.attributes:
            ast = etree.SubElement(a, SAML + "AttributeStatement")
            for attr_name, source in sp.attributes.items():
                vals = values.get(source) or []
                if not vals and source != "groups":
                    continue
                attr = etree.SubElement(ast, SAML + "Attribute", Name=attr_name,
                                        NameFormat="urn:oasis:names:tc:SAML:2.0:attrname-format:basic")
                for v in vals:
                    av = etree.SubElement(attr, SAML + "AttributeValue")
                    av.set(XSI + "type", "xs:string")
                    av.text = v
            if not len(ast):
                a.remove(ast)
        key_pem, cert = self.keys.signing(ws)
        if sp.sign_assertion or not sp.sign_response:
            sign(a, key_pem, cert, after=a_issuer)
        if sp.encrypt_assertions and sp.encryption_certificate:
            encrypt_assertion(a, sp.encryption_certificate)
        if sp.sign_response:
            sign(resp, key_pem, cert, after=resp_issuer)
        if self._recorded.get((session.id, sp.id)) != name_id.text:
            with self.hub.db() as db:
                record_participant(db, workspace_id=ws.id, session_id=session.id, sp_id=sp.id,
                                   name_id=name_id.text, nameid_format=fmt, session_index=session_index)
            if len(self._recorded) > 65536:
                self._recorded.clear()
            self._recorded[(session.id, sp.id)] = name_id.text
        self.audit("saml.sso", ws, actor_id=user.id, sp=sp.entity_id, nameid_format=fmt,
                   encrypted=bool(sp.encrypt_assertions and sp.encryption_certificate),
                   unsolicited=not pending.request_id)
        return self._out(resp, sp, pending)

    def name_id(self, ws, user, sp, fmt: str) -> str:
        """persistent: stable and pairwise (the same user looks unrelated to two SPs), an HMAC of the user and the
        SP's entity ID under the workspace's stored random salt (``SamlKeys.nameid_salt``), so that neither a
        new IDHUB_SECRET_KEY nor re-registering the SP changes it; transient: new at every SSO; email: the
        address; unspecified: the user's idhub id (stable, the same for every SP)."""
        if fmt == NAMEID_PERSISTENT:
            msg = f"{user.id}|{sp.entity_id}".encode()
            return "p" + hmac.new(self.keys.nameid_salt(ws), msg, hashlib.sha256).hexdigest()[:40]
        if fmt == NAMEID_TRANSIENT:
            return new_id()
        if fmt == NAMEID_EMAIL:
            return user.email
        return user.id

    def session_index(self, session_id: str, sp_entity: str) -> str:
        """Names the session to the SP without revealing (a hash of) the session cookie."""
        return "_s" + hmac.new(self._session_key, f"{session_id}|{sp_entity}".encode(),
                               hashlib.sha256).hexdigest()[:40]


def default_acs(sp) -> int:
    """The index (in ``sp.acs``) of the SP's default ACS: the one marked default, else the first."""
    for i, acs in enumerate(sp.acs):
        if acs.get("default"):
            return i
    return 0


def authn_context(amr) -> str:
    amr = list(amr or [])
    if any(m in MFA_METHODS for m in amr):
        if "totp" in amr:
            return AC_TOTP
        if "sms" in amr:
            return AC_SMS
        return AC_MFA
    if amr:
        return AC_PASSWORD
    return AC_UNSPECIFIED
