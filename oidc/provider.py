"""The downstream OpenID Connect provider: authlib's authorization server, grants and endpoints, in plain Python.

The web layer (``oidc/web.py``) turns a Flask request into an ``HttpRequest`` and the answers of this module
into responses; nothing here imports Flask. One ``OidcService`` lives on the hub; an authlib ``Provider`` is
made per request, bound to the workspace whose URL was called (so a client id never leaks across workspaces).

Choices (see docs in the module docstrings below and the report):
- PKCE S256 is required of every client at the authorization endpoint; ``plain`` and a missing method are refused.
- Codes: 256-bit, SHA-256 at rest, 60 s, consumed by one conditional UPDATE; a reused code revokes its tokens.
- Access tokens: RFC 9068 JWTs (5 minutes) whose ``jti`` is recorded (revocation, introspection).
- Refresh tokens: opaque, SHA-256 at rest, rotated at every use; a replayed one revokes its whole family.
  They are bound to the idhub browser session that signed the user in (``offline_access`` included): when the
  session ends (sign-out, End, password or 2FA change, "This wasn't me"), the app's refresh stops working.
- A second factor missing at authorization (the policies want one, or the app asks for ``urn:idhub:acr:mfa``
  through ``acr_values`` or an essential ``acr`` in ``claims``): the signed-in user goes through the sign-in's
  second-factor step (or sets one up) — not the password again — and the ID token's ``acr`` says so.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import secrets
import threading
import time
import urllib.error
import urllib.request
import uuid
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode, urlsplit

from authlib.oauth2.rfc6749 import AuthorizationServer, ClientMixin, OAuth2Payload, OAuth2Request
from authlib.oauth2.rfc6749 import grants as oauth_grants
from authlib.oauth2.rfc6749.errors import (
    AccessDeniedError,
    InvalidClientError,
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    OAuth2Error,
    UnauthorizedClientError,
)
from authlib.oauth2.rfc6749.util import scope_to_list
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from joserfc import jwk, jwt
from joserfc.errors import JoseError
from sqlalchemy import bindparam, insert, select, update

from idp import emailverify
from idp.crypto import derive_key
from idp.invalidation import OIDC_KEYS, WORKSPACES, generation
from idp.mfa.service import enrolled_columns, enrolled_from
from idp.models import Group, GroupMember, User
from oidc.auditbatch import AuditBatcher
from oidc.config import SCOPES, check_secret, client_jwks, client_policies, find_client, guarded, jwks_uri_problem
from oidc.keys import ALGORITHMS, KeyStore
from oidc.models import OidcAccessToken, OidcClient, OidcCode, OidcRefreshToken, OidcSessionClient
from policies.engine import ALLOW, NOT_ASSIGNED, AccountActive, AppAssignment, PolicyEngine, SecondFactor

log = logging.getLogger("idhub.oidc")

# The token endpoint's statements, built once (a statement built per request costs more Python than its round
# trip: SQLAlchemy generates its cache key and coerces every clause again).
_OC = OidcClient.__table__
_CLIENT_BY_ID = select(_OC).where(_OC.c.workspace_id == bindparam("w"), _OC.c.client_id == bindparam("c"))
_REFRESH_WITH_USER = (select(OidcRefreshToken, User, *enrolled_columns(User.id))
                      .outerjoin(User, User.id == OidcRefreshToken.user_id)
                      .where(OidcRefreshToken.token_hash == bindparam("h")))
_RT = OidcRefreshToken.__table__
_ROTATE = (update(_RT).where(_RT.c.token_hash == bindparam("h"), _RT.c.used_at.is_(None), _RT.c.revoked_at.is_(None),
                             _RT.c.expires_at > bindparam("now_"))
           .values(used_at=bindparam("now"), retry_answer=bindparam("retry")))
_INSERT_ACCESS = insert(OidcAccessToken.__table__)
_INSERT_REFRESH = insert(_RT)
_INSERT_SESSION_CLIENT: dict = {}  # dialect name -> INSERT … ON CONFLICT DO NOTHING

CODE_TTL = 60
ACCESS_TTL = 300
ID_TOKEN_TTL = 3600
REFRESH_TTL = 30 * 24 * 3600
MAX_PARAM = 2048
MAX_TOKEN = 8192
CHALLENGE_RE = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")
VERIFIER_RE = CHALLENGE_RE
AMR_MAP = {"pwd": "pwd", "totp": "otp", "sms": "sms", "backup_codes": "otp", "upstream_mfa": "mfa"}
# a passkey (RFC 8176): proof of possession of a hardware-bound key ("hwk") and a user presence test ("user")
PASSKEY_AMR = ("hwk", "user")
SECOND_FACTORS = {"totp", "sms", "backup_codes", "upstream_mfa", "webauthn"}
ACR_MFA = "urn:idhub:acr:mfa"
ACR_PWD = "urn:idhub:acr:pwd"
# a passkey or security key was used: MFA that is phishing-resistant (bound to idhub's origin); it also
# satisfies urn:idhub:acr:mfa and urn:idhub:acr:pwd
ACR_PHR = "urn:idhub:acr:phishing-resistant"
BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_ALGORITHMS = ("RS256", "ES256")  # private_key_jwt: asymmetric only, never none or HS256
ASSERTION_MAX_LIFETIME = 300  # a client assertion's exp must be within 5 minutes
CLOCK_SKEW = 10
FORBIDDEN_HEADERS = {"jwk", "jku", "x5u", "x5c", "crit"}  # keys come from the registration, never the token
PRIVATE_JWK_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}
JWKS_CACHE_TTL = 300  # seconds a client's fetched JWKS is used
JWKS_REFETCH_MIN = 10  # an unknown kid fetches again, but not more often than this
JWKS_TIMEOUT = 5
JWKS_MAX_BYTES = 65536
JWKS_MAX_REDIRECTS = 3


class _SameOriginRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to the same scheme, host and port (and never to a URL we would not fetch)."""

    max_redirections = JWKS_MAX_REDIRECTS
    max_repeats = 1  # a URL seen before in the chain: a loop

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        old, new = urlsplit(req.full_url), urlsplit(newurl)
        try:
            same = (old.scheme, old.hostname, old.port) == (new.scheme, new.hostname, new.port)
        except ValueError:
            same = False
        if not same or jwks_uri_problem(newurl):
            raise urllib.error.HTTPError(req.full_url, code, "redirect to another origin refused", headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_JWKS_OPENER = urllib.request.build_opener(_SameOriginRedirects)


def fetch_jwks(uri: str, *, guarded: bool = False) -> dict:
    """GET a client's JWKS (see ``OidcService._fetch_jwks``); raises on anything but a JSON object.

    ``guarded`` (a client registered over the admin API or console): through ``idp.netfetch`` — resolved once,
    refused when the host is loopback, private, link-local, … outside ``IDHUB_OUTBOUND_ALLOW_CIDRS``, connected to
    the checked address, no redirects at all (an ``idp.netfetch.FetchError`` naming ``jwks_uri``)."""
    problem = jwks_uri_problem(uri)
    if problem:
        raise ValueError(f"jwks_uri {problem}")
    if guarded:
        from idp import netfetch

        raw = netfetch.fetch(uri, field="jwks_uri", timeout=JWKS_TIMEOUT, limit=JWKS_MAX_BYTES,
                             accept="application/json")
    else:
        req = urllib.request.Request(uri, headers={"Accept": "application/json"})  # noqa: S310 (checked above)
        with _JWKS_OPENER.open(req, timeout=JWKS_TIMEOUT) as resp:
            length = resp.headers.get("Content-Length")
            if length is not None and (not length.isdigit() or int(length) > JWKS_MAX_BYTES):
                raise ValueError("JWKS too large")
            raw = resp.read(JWKS_MAX_BYTES + 1)
    if len(raw) > JWKS_MAX_BYTES:
        raise ValueError("JWKS too large")
    data = json.loads(raw)
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError("not a JWKS")
    return data


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def half_hash(value: str) -> str:
    """``at_hash``: the left half of SHA-256, base64url without padding (RS256/ES256 both use SHA-256)."""
    digest = hashlib.sha256(value.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode()


def amr_claim(methods) -> list[str]:
    out = list(dict.fromkeys(v for m in methods
                             for v in (PASSKEY_AMR if m == "webauthn" else (AMR_MAP[m],) if m in AMR_MAP else ())))
    if SECOND_FACTORS.intersection(methods) and "mfa" not in out:
        out.append("mfa")
    return out


def acr_claim(methods) -> str:
    if "webauthn" in methods:
        return ACR_PHR
    return ACR_MFA if SECOND_FACTORS.intersection(methods) else ACR_PWD


ACR_UNSUPPORTED = "unsupported"  # requested_acr: an essential acr none of whose values we can give


def requested_acr(acr_values: str | None, claims: str | None) -> str | None:
    """What the authorization request demands of the authentication: ``ACR_MFA`` (a second factor),
    ``ACR_UNSUPPORTED`` (an essential ``acr`` we cannot give), or None. Raises ValueError on a malformed
    ``claims`` parameter.

    Our two values are levels: a session with a second factor also satisfies ``urn:idhub:acr:pwd``. So only a
    request that accepts MFA *and not* the password alone steps up: ``acr_values`` (voluntary, but honoured)
    listing ``urn:idhub:acr:mfa`` without ``urn:idhub:acr:pwd``, or ``claims`` with an essential ``id_token``
    ``acr`` whose values are only ``urn:idhub:acr:mfa``. Unknown ``acr_values`` are ignored (they are a
    preference); other members of ``claims`` are ignored (``claims_parameter_supported`` is false)."""
    wanted = None
    known = [v for v in (acr_values or "").split() if v in (ACR_MFA, ACR_PWD, ACR_PHR)]
    if ACR_PHR in known and ACR_MFA not in known and ACR_PWD not in known:
        wanted = ACR_PHR
    elif ACR_MFA in known and ACR_PWD not in known:
        wanted = ACR_MFA
    if claims is None:
        return wanted
    try:
        doc = json.loads(claims)
    except (ValueError, RecursionError):
        raise ValueError("Invalid 'claims': not JSON.") from None
    if not isinstance(doc, dict):
        raise ValueError("Invalid 'claims': not a JSON object.")
    id_token = doc.get("id_token")
    if id_token is None:
        return wanted
    if not isinstance(id_token, dict):
        raise ValueError("Invalid 'claims': 'id_token' is not an object.")
    acr = id_token.get("acr")
    if acr is None:
        return wanted
    if not isinstance(acr, dict):
        raise ValueError("Invalid 'claims': 'acr' is not an object.")
    essential, values, value = acr.get("essential", False), acr.get("values"), acr.get("value")
    if not isinstance(essential, bool) or (values is not None and (
            not isinstance(values, list) or not all(isinstance(v, str) for v in values))) or \
            (value is not None and not isinstance(value, str)):
        raise ValueError("Invalid 'claims': malformed 'acr' request.")
    accepted = set(values or ()) | ({value} if value is not None else set())
    if not essential or not accepted:
        return wanted
    supported = accepted & {ACR_MFA, ACR_PWD, ACR_PHR}
    if not supported:
        return ACR_UNSUPPORTED
    if supported == {ACR_PHR}:
        return ACR_PHR
    return ACR_MFA if supported <= {ACR_MFA, ACR_PHR} else wanted


def _ts(dt: datetime) -> int:
    return int(dt.timestamp())


# ---- requests --------------------------------------------------------------------------------------------
@dataclass
class HttpRequest:
    """What the provider needs of an HTTP request (the web layer fills it in)."""

    method: str
    path: str  # path + query string, as received (for the sign-in ``next``)
    args: object  # MultiDict-like: .get, .getlist, iteration over keys
    form: object
    headers: dict = field(default_factory=dict)


@dataclass
class Answer:
    """An HTTP answer: JSON ``body`` (dict), a ``location`` to redirect to, or an HTML error ``page``."""

    status: int
    body: dict | None = None
    headers: list = field(default_factory=list)
    location: str | None = None
    page: tuple[str, str] | None = None  # (title, message) for an error page: nothing trusted to redirect to
    template: tuple[str, dict] | None = None  # (template name, context) for a page of our own
    step_up: StepUp | None = None  # send the browser through the second-factor step of the sign-in


@dataclass(frozen=True)
class StepUp:
    """What the web layer needs to put a signed-in user through the second-factor step (or its set-up): a login
    flow of this user, already past the password, that returns to ``next`` (the authorization request)."""

    user_id: str
    email: str
    amr: tuple[str, ...]
    effect: str  # "mfa" (prove an enrolled factor) or "enroll" (set one up first)
    choices: tuple[str, ...]
    next: str
    app: str
    wants: tuple[str, ...] = ("mfa",)  # "phr": the app asked for a passkey (acr urn:idhub:acr:phishing-resistant)


class _Payload(OAuth2Payload):
    def __init__(self, values):
        self._values = values

    @property
    def data(self):
        return {k: self._values.get(k) for k in self._values}

    @property
    def datalist(self):
        return {k: list(self._values.getlist(k)) for k in self._values}


class _Request(OAuth2Request):
    def __init__(self, req: HttpRequest, uri: str):
        super().__init__(method=req.method, uri=uri, headers=req.headers)
        self._req = req
        self.payload = _Payload(req.form if req.method == "POST" else req.args)
        self.idhub: dict = {}

    @property
    def args(self):
        return self._req.args

    @property
    def form(self):
        return self._req.form


# ---- the client model -------------------------------------------------------------------------------------
class Client(ClientMixin):
    def __init__(self, row: OidcClient):
        self.row = row
        self.client_id = row.client_id

    def get_client_id(self):
        return self.row.client_id

    def get_default_redirect_uri(self):
        return None  # redirect_uri is always required: never guess where to send a code or an error

    def get_allowed_scope(self, scope):
        if not scope:
            return ""
        allowed = set(self.row.scopes or SCOPES)
        return " ".join(s for s in scope_to_list(scope) if s in allowed)

    def check_redirect_uri(self, redirect_uri):
        # Exact string equality, no normalisation at all (no case folding, no trailing-slash or port games).
        return isinstance(redirect_uri, str) and any(
            hmac.compare_digest(redirect_uri.encode("utf-8", "surrogatepass"), u.encode()) for u in
            (self.row.redirect_uris or []))

    def check_post_logout_redirect_uri(self, uri: str) -> bool:
        return isinstance(uri, str) and uri in (self.row.post_logout_redirect_uris or [])

    def check_client_secret(self, client_secret):
        return check_secret(self.row.secret_hash, client_secret)

    def check_endpoint_auth_method(self, method, endpoint):
        if endpoint == "introspection" and method == "none":
            return False
        return method in self.row.token_endpoint_auth_method.split(",")

    def check_response_type(self, response_type):
        return response_type == "code" and "authorization_code" in (self.row.grant_types or [])

    def check_grant_type(self, grant_type):
        return grant_type in (self.row.grant_types or [])


# ---- PKCE: S256 only, always required ---------------------------------------------------------------------
class StrictPKCE:
    """Replaces authlib's ``CodeChallenge`` whose defaults are unsafe (optional PKCE, ``plain``, missing = plain)."""

    def __call__(self, grant):
        grant.register_hook("after_validate_authorization_request_payload", self.validate_code_challenge)
        grant.register_hook("after_validate_token_request", self.validate_code_verifier)

    @staticmethod
    def validate_code_challenge(grant, redirect_uri):
        datalist = grant.request.payload.datalist
        for name in ("code_challenge", "code_challenge_method", "nonce", "prompt", "max_age"):
            if len(datalist.get(name, [])) > 1:
                raise InvalidRequestError(f"Multiple '{name}' in request.")
        data = grant.request.payload.data
        challenge, method = data.get("code_challenge"), data.get("code_challenge_method")
        if not challenge:
            raise InvalidRequestError("PKCE is required: send code_challenge with code_challenge_method=S256.")
        if method != "S256":
            raise InvalidRequestError("Only code_challenge_method=S256 is supported.")
        if not CHALLENGE_RE.match(challenge):
            raise InvalidRequestError("Invalid 'code_challenge'.")

    @staticmethod
    def validate_code_verifier(grant, result):
        verifier = grant.request.form.get("code_verifier")
        code: OidcCode = grant.request.authorization_code
        if not verifier or not isinstance(verifier, str) or not VERIFIER_RE.match(verifier):
            raise InvalidGrantError("Missing or invalid 'code_verifier'.")
        expected = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if code.code_challenge_method != "S256" or not hmac.compare_digest(expected, code.code_challenge):
            raise InvalidGrantError("Code verifier does not match the code challenge.")


# ---- grants -----------------------------------------------------------------------------------------------
CLIENT_AUTH = ["private_key_jwt", "client_secret_basic", "client_secret_post", "none"]
CONFIDENTIAL_AUTH = ["private_key_jwt", "client_secret_basic", "client_secret_post"]


class AuthorizationCodeGrant(oauth_grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH

    def generate_authorization_code(self):
        return secrets.token_urlsafe(32)  # 256 bits

    def save_authorization_code(self, code, request):
        svc: OidcService = self.server.svc
        info = request.idhub
        now = svc.hub.clock()
        data = request.payload.data
        with svc.hub.db() as db:
            db.add(OidcCode(code_hash=sha256_hex(code), workspace_id=self.server.ws.id,
                            client_id=request.client.client_id, user_id=info["user_id"],
                            session_id=info["session_id"], redirect_uri=request.payload.redirect_uri,
                            scope=request.scope or "", nonce=data.get("nonce") or None,
                            code_challenge=data["code_challenge"], code_challenge_method="S256",
                            auth_time=info["auth_time"], amr=list(info["amr"]), created_at=now,
                            expires_at=now + timedelta(seconds=CODE_TTL)))
            db.commit()

    def query_authorization_code(self, code, client):
        """Consume the code atomically: of parallel redemptions exactly one wins; a replay revokes its tokens."""
        if not isinstance(code, str) or len(code) > 256:
            return None
        svc: OidcService = self.server.svc
        h = sha256_hex(code)
        now = svc.hub.clock()
        ws_id = self.server.ws.id
        with svc.hub.db() as db:
            res = db.execute(update(OidcCode).where(
                OidcCode.code_hash == h, OidcCode.workspace_id == ws_id, OidcCode.client_id == client.client_id,
                OidcCode.used_at.is_(None), OidcCode.expires_at > now,
            ).values(used_at=now))
            if res.rowcount == 1:
                db.commit()
                return db.get(OidcCode, h)
            db.rollback()
            row = db.get(OidcCode, h)
        if row is not None and row.workspace_id == ws_id and row.client_id == client.client_id \
                and row.used_at is not None:
            svc.revoke_family(ws_id, h, reason="code_reuse")
            svc.audit("oidc.code.reused", ws_id, actor_id=row.user_id, client_id=client.client_id)
        return None

    def delete_authorization_code(self, authorization_code):
        pass  # consumed in query_authorization_code

    def authenticate_user(self, authorization_code):
        return self.server.svc.active_user(authorization_code.user_id, authorization_code.session_id,
                                           self.server.ws.id)

    def create_token_response(self):
        code: OidcCode = self.request.authorization_code
        client: Client = self.request.client
        user = self.authenticate_user(code)
        if user is None:
            raise InvalidGrantError("The sign-in behind this code has ended.")
        token = self.server.svc.issue(
            self.server.ws, client, user, code.scope, family_id=code.code_hash, session_id=code.session_id,
            auth_time=code.auth_time, amr=code.amr, nonce=code.nonce,
            refresh="offline_access" in scope_to_list(code.scope) and client.check_grant_type("refresh_token"),
        )
        return 200, token, self.TOKEN_RESPONSE_HEADER


class RefreshRetry(Exception):  # noqa: N818 (not an error: the answer to a retried request)
    """A used refresh token presented again within the grace window, its successor still unused: the client lost
    the answer (a timeout, a retry against another node). ``answer`` is the token response it was given."""

    def __init__(self, answer: dict) -> None:
        super().__init__("refresh retried")
        self.answer = answer


class RefreshTokenGrant(oauth_grants.RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH
    INCLUDE_NEW_REFRESH_TOKEN = True

    def validate_token_request(self):
        client = self.authenticate_token_endpoint_client()
        if not client.check_grant_type(self.GRANT_TYPE):
            raise UnauthorizedClientError("The client is not allowed to use grant_type=refresh_token.")
        self.request.client = client
        presented = self.request.form.get("refresh_token")
        if not presented or not isinstance(presented, str) or len(presented) > 256:
            raise InvalidRequestError("Missing 'refresh_token' in request.")
        svc: OidcService = self.server.svc
        try:
            row, user, enrolled = svc.find_refresh(self.server.ws.id, client.client_id, presented)
        except RefreshRetry as retry:  # the same request again, within the grace window: the same answer
            self.request.idhub["retry_answer"] = retry.answer
            return
        self.request.refresh_token, self.request.idhub["user"] = row, user
        self.request.idhub["enrolled"] = enrolled
        scope = self.request.payload.scope
        if scope and not set(scope_to_list(scope)).issubset(scope_to_list(row.scope)):
            raise InvalidScopeError()
        self.request.idhub["scope"] = scope or row.scope

    def create_token_response(self):
        if "retry_answer" in self.request.idhub:
            return 200, self.request.idhub["retry_answer"], self.TOKEN_RESPONSE_HEADER
        svc: OidcService = self.server.svc
        row: OidcRefreshToken = self.request.refresh_token
        client: Client = self.request.client
        ws = self.server.ws
        user = svc.active_user(row.user_id, row.session_id, ws.id, user=self.request.idhub["user"])
        if user is None:
            svc.revoke_family(ws.id, row.family_id, reason="session_ended")
            raise InvalidGrantError("The sign-in behind this token has ended.")
        decision = svc.refresh_decision(ws, self.server.http_client, user, row.amr, client.row,
                                        enrolled=self.request.idhub["enrolled"])
        if decision.effect != "allow":
            svc.audit("oidc.refresh.denied", ws.id, actor_id=user.id, client_id=client.client_id,
                      rule=decision.rule)
            if decision.rule == "app_assignment":  # no longer assigned: the grant is over, not just this use
                svc.revoke_family(ws.id, row.family_id, reason="app_assignment")
            raise InvalidGrantError("Access is not allowed by the workspace's policies. Sign in again.")
        try:
            token = svc.issue(ws, client, user, self.request.idhub["scope"], family_id=row.family_id,
                              session_id=row.session_id, auth_time=row.auth_time, amr=row.amr, nonce=None,
                              refresh=True, rotate_from=row, presented=self.request.form.get("refresh_token"))
        except RefreshRetry as retry:  # the same request, sent twice at once, lost the race: the winner's answer
            return 200, retry.answer, self.TOKEN_RESPONSE_HEADER
        return 200, token, self.TOKEN_RESPONSE_HEADER


class ClientCredentialsGrant(oauth_grants.ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = CONFIDENTIAL_AUTH

    def create_token_response(self):
        client: Client = self.request.client
        scope = " ".join(s for s in scope_to_list(self.request.payload.scope or "")
                         if s not in ("openid", "offline_access", "profile", "email", "groups"))
        token = self.server.svc.issue(self.server.ws, client, None, scope, family_id="cc:" + uuid.uuid4().hex,
                                      session_id=None, auth_time=None, amr=(), nonce=None, refresh=False)
        return 200, token, self.TOKEN_RESPONSE_HEADER


# ---- revocation and introspection ---------------------------------------------------------------------------
@dataclass
class TokenRef:
    kind: str  # access_token | refresh_token
    client_id: str
    family_id: str
    expires_at: datetime
    revoked: bool
    key: str  # jti or refresh hash
    claims: dict = field(default_factory=dict)
    now: datetime | None = None
    user_id: str | None = None
    scope: str = ""

    def check_client(self, client):
        return hmac.compare_digest(self.client_id.encode(), client.client_id.encode())

    def is_expired(self):
        return self.expires_at <= self.now

    def is_revoked(self):
        return self.revoked


class Revocation(RevocationEndpoint):
    CLIENT_AUTH_METHODS = CLIENT_AUTH

    def query_token(self, token_string, token_type_hint):
        return self.server.svc.find_token(self.server.ws.id, token_string, token_type_hint)

    def authenticate_token(self, request, client):
        self.check_params(request, client)
        token = self.query_token(request.form["token"], request.form.get("token_type_hint"))
        # A token of another client is not revealed: answered like an unknown one (RFC 7009 2.2).
        return token if token and token.check_client(client) else None

    def revoke_token(self, token: TokenRef, request):
        svc: OidcService = self.server.svc
        if token.kind == "refresh_token":
            svc.revoke_family(self.server.ws.id, token.family_id, reason="revoked_by_client")
        else:
            now = svc.hub.clock()
            with svc.hub.db() as db:
                res = db.execute(update(OidcAccessToken).where(OidcAccessToken.jti == token.key,
                                                               OidcAccessToken.revoked_at.is_(None))
                                 .values(revoked_at=now))
                if res.rowcount == 0 and token.user_id is None and db.get(OidcAccessToken, token.key) is None:
                    # a client credentials token has no row until it is revoked: the row is the revocation
                    db.add(OidcAccessToken(jti=token.key, family_id=token.family_id, workspace_id=self.server.ws.id,
                                           client_id=token.client_id, user_id=None, session_id=None,
                                           scope=token.scope, created_at=now, expires_at=token.expires_at,
                                           revoked_at=now))
                db.commit()


class Introspection(IntrospectionEndpoint):
    CLIENT_AUTH_METHODS = CONFIDENTIAL_AUTH

    def query_token(self, token_string, token_type_hint):
        return self.server.svc.find_token(self.server.ws.id, token_string, token_type_hint)

    def authenticate_token(self, request, client):
        self.check_params(request, client)
        token = self.query_token(request.form["token"], request.form.get("token_type_hint"))
        # Only the client a token was issued to may introspect it; others learn nothing ("active": false).
        return token if token and self.check_permission(token, client, request) else None

    def check_permission(self, token, client, request):
        return token.check_client(client)

    def introspect_token(self, token: TokenRef):
        svc: OidcService = self.server.svc
        if token.user_id and not svc.token_user_active(token, self.server.ws.id):
            return {"active": False}
        out = {"active": True, "client_id": token.client_id, "token_type": token.kind, "scope": token.scope,
               "exp": _ts(token.expires_at), "iss": svc.issuer(self.server.ws)}
        if token.user_id:
            out["sub"] = token.user_id
        if token.kind == "access_token":
            out.update({k: token.claims[k] for k in ("iat", "jti", "aud", "sid") if k in token.claims})
            out["token_type"] = "Bearer"
        return out


# ---- the authorization server ---------------------------------------------------------------------------------
class Provider(AuthorizationServer):
    def __init__(self, svc: OidcService, ws, http_client):
        super().__init__(scopes_supported=list(SCOPES))
        self.svc = svc
        self.ws = ws
        self.http_client = http_client
        self.register_grant(AuthorizationCodeGrant, [StrictPKCE()])
        self.register_grant(RefreshTokenGrant)
        self.register_grant(ClientCredentialsGrant)
        self.register_endpoint(Revocation)
        self.register_endpoint(Introspection)
        self.register_client_auth_method(
            "private_key_jwt", lambda query_client, request: svc.authenticate_assertion(ws, request, query_client))

    def query_client(self, client_id):
        row = self.svc.client_row(self.ws.id, client_id)
        return Client(row) if row else None

    def save_token(self, token, request):
        raise NotImplementedError  # every grant issues through OidcService.issue

    def send_signal(self, name, *args, **kwargs):
        pass

    def create_oauth2_request(self, request):
        return request

    def handle_response(self, status, body, headers):
        return Answer(status, body if isinstance(body, dict) else ({} if not body else {"body": body}),
                      list(headers or []))


# ---- the service ----------------------------------------------------------------------------------------------
PURGE_INTERVAL = 600.0  # seconds between two opportunistic purges of one process
WORKSPACE_CACHE_TTL = 5.0  # seconds a process maps a slug to its workspace for the JSON endpoints


class OidcService:
    def __init__(self, hub, box, sid_key: str):
        self.hub = hub
        self.keys = KeyStore(hub.db, box, lambda: hub.clock())
        self._sid_key = sid_key.encode()
        # (uri, guarded) -> (fetched, jwks, tried)
        self._jwks_cache: dict[tuple[str, bool], tuple[float | None, dict, float | None]] = {}
        self._jwks_lock = threading.Lock()
        record = hub._record_decision

        def record_refusals(decision, ctx):
            if decision.effect != ALLOW:
                record(decision, ctx)

        self._refresh_engine = PolicyEngine(rules=(AccountActive(), AppAssignment(), SecondFactor()),
                                            record=record_refusals)
        self._assignment_engine = PolicyEngine(rules=(AppAssignment(),), record=record_refusals)
        self._audit = AuditBatcher(hub.audit)
        self._workspaces: dict[str, tuple[float, object, int]] = {}
        self._next_purge = time.monotonic() + PURGE_INTERVAL
        self._purge_lock = threading.Lock()
        # how the opportunistic purge runs: a daemon thread, off the request (tests run it inline)
        self.purge_runner = lambda fn: threading.Thread(target=fn, name="oidc-purge", daemon=True).start()

    # -- clean-up --
    def purge(self) -> dict[str, int]:
        """Delete expired codes, tokens, keys past their overlap and expired one-time values (``idhub oidc
        purge``); audited when anything was removed."""
        from oidc.purge import purge

        counts = purge(self.hub.db, self.hub.clock(), getattr(self.hub.stores, "one_time", None))
        if any(counts.values()):
            self.hub.audit.record("oidc.purge", data=counts)
        return counts

    def rotate_keys(self, ws, alg: str = "RS256", actor: str = "idhub oidc rotate-keys") -> str:
        """A new signing key of ``alg`` for the workspace (``KeyStore.rotate``: the previous ones stop signing
        now and stay in the JWKS for the overlap); audited. Returns the new kid."""
        from oidc.keys import DEFAULT_OVERLAP

        if alg not in ALGORITHMS:
            raise ValueError(f"unsupported signing algorithm {alg!r}")
        before = {k.kid for k in self.keys.published(ws.id) if k.alg == alg and k.retired_at is None}
        kid = self.keys.rotate(ws.id, alg, DEFAULT_OVERLAP)
        self.hub.changed(OIDC_KEYS, ws.id)  # every node signs with the new key at once
        self.hub.audit.record("oidc.keys.rotated", workspace_id=ws.id, actor_email=actor,
                              data={"kid": kid, "alg": alg, "retired": sorted(before),
                                    "overlap_seconds": int(DEFAULT_OVERLAP.total_seconds())})
        return kid

    def revoke_key(self, ws, kid: str, record=None) -> dict | None:
        """Emergency revocation of signing key ``kid`` (``KeyStore.revoke``), on every node at once; audited
        (``record(type, data)``: the caller's audit, with its actor; by default the command line's).
        {"kid", "alg", "replacement"}; None when the workspace publishes no such key."""
        done = self.keys.revoke(ws.id, kid)
        if done is None:
            return None
        alg, replacement = done
        self.hub.changed(OIDC_KEYS, ws.id)
        out = {"kid": kid, "alg": alg, "replacement": replacement}
        if record is None:
            self.hub.audit.record("oidc.key.revoked", workspace_id=ws.id, actor_email="idhub oidc revoke-key",
                                  data=out)
        else:
            record("oidc.key.revoked", out)
        return out

    def maybe_purge(self) -> None:
        """Opportunistic clean-up: at most once per ``PURGE_INTERVAL`` per process, from the token endpoint."""
        if time.monotonic() < self._next_purge or not self._purge_lock.acquire(blocking=False):
            return
        self._next_purge = time.monotonic() + PURGE_INTERVAL

        def run():
            try:
                self.purge()
            except Exception as exc:  # a failed clean-up must never fail a token request; the next one retries
                log.warning("oidc purge failed", extra={"error": type(exc).__name__})
            finally:
                self._purge_lock.release()

        self.purge_runner(run)

    # -- look-ups of the token endpoint --
    # Not cached: a client's secret rotated through the admin API must stop working at once, in every worker.
    def client_row(self, ws_id: str, client_id):
        """The client's row (a Core row with ``OidcClient``'s columns), read at every token request: one prebuilt
        statement, no transaction around it."""
        if not isinstance(client_id, str) or not client_id or len(client_id) > 128:
            return None
        with self.hub.read() as conn:
            return conn.execute(_CLIENT_BY_ID, {"w": ws_id, "c": client_id}).first()

    def workspace(self, slug: str):
        """The workspace of a JSON endpoint by its slug, remembered ``WORKSPACE_CACHE_TTL`` seconds per process.
        Only its identity (id, slug: the issuer) is used from this copy; its policies are read fresh where
        they apply (``refresh_decision``), and its clients are never cached."""
        from idp.accounts import workspace_by_slug

        hit = self._workspaces.get(slug)
        if hit is not None and time.monotonic() - hit[0] < WORKSPACE_CACHE_TTL and hit[2] == generation(WORKSPACES):
            return hit[1]
        gen = generation(WORKSPACES)
        with self.hub.db() as db:
            ws = workspace_by_slug(db, slug)
        if ws is not None:
            if len(self._workspaces) > 1024:
                self._workspaces.clear()
            self._workspaces[slug] = (time.monotonic(), ws, gen)
        return ws

    def invalidate(self) -> None:
        """Forget the cached workspaces and signing keys (after a change made in this process)."""
        self._workspaces.clear()
        self.keys.invalidate()

    # -- names and metadata --
    def issuer(self, ws) -> str:
        return self.hub.url(f"/w/{ws.slug}")

    def endpoint(self, ws, name: str) -> str:
        return self.hub.url(f"/w/{ws.slug}/oauth2/{name}")

    def sid(self, session_id: str) -> str:
        """The OIDC ``sid`` of an idhub session: an HMAC of its (hashed) id, so it reveals nothing."""
        return hmac.new(self._sid_key, session_id.encode(), hashlib.sha256).hexdigest()[:32]

    def discovery(self, ws) -> dict:
        return {
            "issuer": self.issuer(ws),
            "authorization_endpoint": self.endpoint(ws, "authorize"),
            "token_endpoint": self.endpoint(ws, "token"),
            "userinfo_endpoint": self.endpoint(ws, "userinfo"),
            "jwks_uri": self.endpoint(ws, "jwks"),
            "revocation_endpoint": self.endpoint(ws, "revoke"),
            "introspection_endpoint": self.endpoint(ws, "introspect"),
            "end_session_endpoint": self.endpoint(ws, "logout"),
            "scopes_supported": list(SCOPES),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": list(ALGORITHMS),
            "token_endpoint_auth_methods_supported": list(CLIENT_AUTH),
            "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGORITHMS),
            "revocation_endpoint_auth_methods_supported": list(CLIENT_AUTH),
            "revocation_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGORITHMS),
            "introspection_endpoint_auth_methods_supported": list(CONFIDENTIAL_AUTH),
            "introspection_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGORITHMS),
            "code_challenge_methods_supported": ["S256"],
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "acr", "amr", "sid",
                                 "azp", "at_hash", "email", "email_verified", "name", "groups"],
            "acr_values_supported": [ACR_MFA, ACR_PWD, ACR_PHR],
            "prompt_values_supported": ["none", "login", "consent", "select_account"],
            "authorization_response_iss_parameter_supported": True,
            "backchannel_logout_supported": True,
            "backchannel_logout_session_supported": True,
            "frontchannel_logout_supported": False,
            "request_parameter_supported": False,
            "request_uri_parameter_supported": False,
            "claims_parameter_supported": False,
        }

    def audit(self, type_: str, ws_id: str, actor_id: str | None = None, client_id: str | None = None, **data):
        """Through the group commit (``oidc.auditbatch``): returns once the event is in the audit log."""
        self._audit.record(type_, workspace_id=ws_id, actor_id=actor_id, data={"client": client_id, **data})

    # -- signing and verifying --
    def sign(self, ws, claims: dict, typ: str = "JWT", alg: str = "RS256") -> str:
        if alg not in ALGORITHMS:
            raise ValueError(f"unsupported signing algorithm {alg!r}")
        kid, key = self.keys.signing_key(ws.id, alg)
        return jwt.encode({"alg": alg, "kid": kid, "typ": typ}, claims, key, algorithms=[alg])

    def verify(self, ws, token: str, typ: str | None = None) -> dict | None:
        """Claims of a JWT we signed for this workspace, or None. Explicit algorithm allowlist: no ``none``,
        no HS256 (a symmetric key made of our public key is never a candidate), no embedded ``jwk``/``jku``."""
        if not isinstance(token, str) or len(token) > MAX_TOKEN or token.count(".") != 2:
            return None
        try:
            header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "==="))
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(header, dict) or header.get("alg") not in ALGORITHMS or \
                {"jwk", "jku", "x5u", "x5c", "crit"} & set(header):
            return None
        if typ is not None and str(header.get("typ", "")).lower() != typ:
            return None
        try:
            tok = jwt.decode(token, self.keys.verification_keys(ws.id), algorithms=list(ALGORITHMS))
        except (JoseError, ValueError, TypeError, KeyError):
            return None
        claims = tok.claims
        if claims.get("iss") != self.issuer(ws):
            return None
        return claims

    # -- private_key_jwt client authentication (RFC 7523 section 2.2, OIDC Core section 9) --
    def authenticate_assertion(self, ws, request, query_client):
        """The client of a valid ``client_assertion``; None when there is none; InvalidClientError otherwise.

        Keys come only from the client's registration (inline ``jwks`` or ``jwks_uri``), never from the token's
        header; algorithms are an explicit allowlist (RS256, ES256); ``jti`` is single use until ``exp``."""
        form = request.form
        assertion = form.get("client_assertion")
        if assertion is None:
            return None

        def refuse(reason: str):
            log.info("client assertion refused", extra={"reason": reason})
            raise InvalidClientError(status_code=401, description="Invalid client assertion.")

        if form.get("client_assertion_type") != JWT_BEARER:
            refuse("assertion_type")
        if not isinstance(assertion, str) or len(assertion) > MAX_TOKEN or assertion.count(".") != 2:
            refuse("format")
        head, body, _sig = assertion.split(".")
        try:
            header, unverified = _b64_json(head), _b64_json(body)
        except (ValueError, UnicodeError):
            header = unverified = None
        if header is None or unverified is None:
            refuse("format")
        alg = header.get("alg")
        if alg not in ASSERTION_ALGORITHMS:
            refuse("alg")
        if FORBIDDEN_HEADERS & set(header):
            refuse("header")
        client_id = unverified.get("iss")
        if not isinstance(client_id, str) or unverified.get("sub") != client_id:
            refuse("iss_sub")
        if form.get("client_id") is not None and form.get("client_id") != client_id:
            refuse("client_id")
        client = query_client(client_id)
        if client is None or client.row.token_endpoint_auth_method != "private_key_jwt":
            refuse("client")
        key = self._assertion_key(client.row, header)
        if key is None:
            refuse("key")
        try:
            claims = jwt.decode(assertion, key, algorithms=[alg]).claims
        except (JoseError, ValueError, TypeError, KeyError):
            refuse("signature")
        if claims.get("iss") != client_id or claims.get("sub") != client_id:
            refuse("iss_sub")
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        allowed = {self.issuer(ws), self.endpoint(ws, "token"), request.uri}
        if not any(isinstance(a, str) and a in allowed for a in auds):
            refuse("aud")
        now = _ts(self.hub.clock())
        exp = claims.get("exp")
        if not _is_int(exp) or exp <= now or exp > now + ASSERTION_MAX_LIFETIME + CLOCK_SKEW:
            refuse("exp")
        for name in ("iat", "nbf"):
            if name in claims and (not _is_int(claims[name]) or claims[name] > now + CLOCK_SKEW):
                refuse(name)
        jti = claims.get("jti")
        if not isinstance(jti, str) or not 0 < len(jti) <= 256:
            refuse("jti")
        key_name = f"oidc-jti:{ws.id}:{sha256_hex(client_id)}:{sha256_hex(jti)}"
        if not self.hub.stores.one_time.add(key_name, "1", exp - now + CLOCK_SKEW):
            self.audit("oidc.client_assertion.replayed", ws.id, client_id=client_id)
            refuse("replay")
        return client

    def _assertion_key(self, row: OidcClient, header: dict):
        with self.hub.db() as db:
            reg = client_jwks(db, row)
        if reg is None:
            return None
        if reg.jwks:
            return _pick_key(reg.jwks, header)
        if not reg.jwks_uri:
            return None
        key = _pick_key(self._fetch_jwks(reg.jwks_uri, client=row), header)
        if key is None:  # perhaps a new key of the client: fetch once more (at most every JWKS_REFETCH_MIN s)
            key = _pick_key(self._fetch_jwks(reg.jwks_uri, force=True, client=row), header)
        return key

    def _fetch_jwks(self, uri: str, force: bool = False, client: OidcClient | None = None) -> dict:
        """A client's JWKS from its ``jwks_uri``: https (or http on loopback) only, no redirect to another
        host, ``JWKS_TIMEOUT`` seconds, at most ``JWKS_MAX_BYTES``; cached ``JWKS_CACHE_TTL`` seconds; ``force``
        (an unknown ``kid``) fetches again unless the last fetch is younger than ``JWKS_REFETCH_MIN`` seconds, so
        assertions with made-up kids cannot make us hammer the client's server. A failed fetch keeps what we had.

        A ``client`` registered over the admin API or console is fetched through ``idp.netfetch``'s checks (see
        ``fetch_jwks``), from a cache of its own (a copy fetched for a config-file client is never used for it); a
        refusal or failure is then also audited (``oidc.client_jwks.fetch_failed``) for the workspace's admins."""
        checked = guarded(client)
        key = (uri, checked)
        now = self.hub.clock().timestamp()
        with self._jwks_lock:
            fetched_at, data, attempted_at = self._jwks_cache.get(key, (None, {}, None))
        if fetched_at is not None and not force and now - fetched_at < JWKS_CACHE_TTL:
            return data
        if attempted_at is not None and now - attempted_at < JWKS_REFETCH_MIN:
            return data  # fetched (or tried) a moment ago: not again
        with self._jwks_lock:
            self._jwks_cache[key] = (fetched_at, data, now)
        try:
            fresh = fetch_jwks(uri, guarded=checked)
        except Exception as exc:  # the client's key server is down, misbehaves or is refused: keep what we had
            why = str(exc) if isinstance(exc, ValueError) else type(exc).__name__  # FetchError: field and reason
            log.warning("client jwks_uri fetch failed", extra={"error": type(exc).__name__, "reason": why[:200]})
            if checked and client is not None:
                self.audit("oidc.client_jwks.fetch_failed", client.workspace_id, client_id=client.client_id,
                           error=why[:200])
            return data
        with self._jwks_lock:
            self._jwks_cache[key] = (now, fresh, now)
        return fresh

    # -- policies at refresh time --
    def refresh_decision(self, ws, http_client, user: User, methods, client_row, *, enrolled=None):
        """The policy decision for a refresh grant.

        A refresh is made by the app's *server*, so its address says nothing about where the user is: the IP
        allowlist (the workspace's and the app's) is left out here — it was applied to the browser when the grant
        was authorised, and is applied again at every authorization request. Everything else still applies:
        the account is active, MFA required for this app (the grant's methods must include a second factor,
        the user cannot be prompted here, so anything but "allow" is a refusal). The session is checked by
        ``active_user``. Denials are audited by the engine; allows are not (one event per refresh would flood
        the log: the issued token is audited). ``client_row``: the client's row, read by this request's client
        authentication (its ``require_mfa`` and assignment are the app's policies: not read a second time)."""
        from idp.models import Workspace

        if user.workspace_id == ws.id and "workspace" in user.__dict__:
            ws = user.workspace  # the policies as they are now: read with the user, for this request
        else:
            with self.hub.read_db() as db:  # (``ws`` may be the endpoint's cached copy)
                ws = db.get(Workspace, ws.id) or ws
        client_id = client_row.client_id  # the app's own policies, from the client's row read for this request
        app_policies = {k: v for k, v in client_policies(client_row).items() if k != "ip_allowlist"}
        policies = {k: v for k, v in (ws.policies or {}).items() if k != "ip_allowlist"}
        if self.hub.mfa is None:
            enrolled = ()
        else:
            enrolled = tuple((enrolled if enrolled is not None else self.hub.mfa.enrolled(user.id)).methods())
        ctx = self.hub.policy_context(ws, http_client.ip, user_id=user.id, account=user, methods=methods or (),
                                      app=client_id, app_policies=app_policies, enrolled=enrolled,
                                      policies=policies)
        if user.workspace_id != ws.id:  # read by active_user just before
            ctx = replace(ctx, user_active=False)
        return self._refresh_engine.evaluate(ctx)

    # -- users --
    def active_user(self, user_id: str | None, session_id: str | None, ws_id: str, user: User | None = None
                    ) -> User | None:
        """The user, if active, in this workspace, and (for user tokens) the idhub session still active.
        ``user``: the row when the caller has just read it (in the same transaction as the token)."""
        if user is None or user.id != user_id:
            with self.hub.read_db() as db:
                user = db.get(User, user_id) if user_id else None  # with its workspace (a joined load)
        if user is None or not user.active or user.workspace_id != ws_id:
            return None
        if session_id is not None:
            sess = self.hub.stores.sessions.get(session_id)
            if sess is None or sess.workspace_id != ws_id or sess.user_id != user_id \
                    or not self.hub.sessions.is_active(sess, self.hub.lifetimes(user.workspace)):
                return None  # the workspace's session lifetimes as they are now (read with the user)
        return user

    def token_user_active(self, token: TokenRef, ws_id: str) -> bool:
        session_id = token.claims.get("_session_id")
        return self.active_user(token.user_id, session_id, ws_id) is not None

    def user_claims(self, user: User, scopes: list[str]) -> dict:
        out: dict = {}
        if "email" in scopes and user.email:  # a SCIM user may have no address: then no email claim at all
            # Only what idhub knows: an address of a domain the workspace claims, or one whose owner completed a
            # mail round trip or a trusted upstream vouched for (never an address an admin or SCIM client typed).
            out.update({"email": user.email, "email_verified": emailverify.is_verified(
                user.email, user.email_verified_via, user.workspace)})
        if "profile" in scopes:
            out["name"] = user.name or user.email
        if "groups" in scopes:
            with self.hub.db() as db:
                out["groups"] = sorted(db.scalars(select(Group.name).join(GroupMember, GroupMember.group_id ==
                                                                           Group.id)
                                                  .where(GroupMember.user_id == user.id)))
        return out

    # -- issuing --
    def issue(self, ws, client: Client, user: User | None, scope: str, *, family_id: str, session_id: str | None,
              auth_time: datetime | None, amr, nonce: str | None, refresh: bool,
              rotate_from: OidcRefreshToken | None = None, presented: str | None = None) -> dict:
        """Sign and record the tokens of a grant. ``rotate_from``: the refresh token being used, marked used in
        the same transaction as the new tokens are recorded (a rotation is all or nothing, one commit); if it
        was used meanwhile (a parallel replay), nothing is issued and its family is revoked. A user's tokens also
        record the app as a participant of the session (``OidcSessionClient``, once per session and app), in
        the same transaction: back-channel logout reaches it whatever tokens are left when the session ends."""
        now = self.hub.clock()
        iss = self.issuer(ws)
        jti = secrets.token_urlsafe(24)
        scopes = scope_to_list(scope) or []
        sub = user.id if user else client.client_id
        at_claims = {"iss": iss, "sub": sub, "aud": client.client_id, "client_id": client.client_id,
                     "iat": _ts(now), "exp": _ts(now) + ACCESS_TTL, "jti": jti, "scope": " ".join(scopes)}
        if user is not None:
            at_claims.update({"auth_time": _ts(auth_time), "acr": acr_claim(amr), "amr": amr_claim(amr),
                              "sid": self.sid(session_id)})
        access = self.sign(ws, at_claims, typ="at+jwt")
        token = {"access_token": access, "token_type": "Bearer", "expires_in": ACCESS_TTL}
        if scopes:
            token["scope"] = " ".join(scopes)
        rt = secrets.token_urlsafe(32) if refresh and user is not None else None
        if rt is not None:
            token["refresh_token"] = rt
        if user is not None and "openid" in scopes:
            id_claims = {"iss": iss, "sub": user.id, "aud": client.client_id, "azp": client.client_id,
                         "iat": _ts(now), "exp": _ts(now) + ID_TOKEN_TTL, "auth_time": _ts(auth_time),
                         "acr": acr_claim(amr), "amr": amr_claim(amr), "sid": self.sid(session_id),
                         "at_hash": half_hash(access)}
            if nonce:
                id_claims["nonce"] = nonce
            id_claims.update(self.user_claims(user, scopes))
            token["id_token"] = self.sign(ws, id_claims, alg=client.row.id_token_signed_response_alg or "RS256")
        # A client credentials token is not recorded (see find_token); a user's token is, with its session.
        with self.hub.connect() if user is not None else nullcontext() as db:  # prebuilt Core statements, one
            if rotate_from is not None:                                          # transaction
                # the answer is kept (encrypted under the presented token) for a retry within the grace window
                retry = self._seal_retry(presented, rotate_from.token_hash, token) if presented else None
                if db.execute(_ROTATE, {"h": rotate_from.token_hash, "now_": now, "now": now,
                                        "retry": retry}).rowcount != 1:
                    db.rollback()
                    # used meanwhile: by the same request sent twice at once (the same answer), or by a replay
                    with self.hub.db() as again:
                        used = again.get(OidcRefreshToken, rotate_from.token_hash)
                        answer = (self._retry_answer(again, used, presented, self.hub.clock())
                                  if used is not None and used.used_at is not None and presented else None)
                    if answer is not None:
                        self.audit("oidc.refresh.retried", ws.id, actor_id=user.id, client_id=client.client_id)
                        raise RefreshRetry(answer)
                    self._refresh_reused(ws.id, rotate_from.family_id, rotate_from.user_id, client.client_id)
            if user is not None:
                db.execute(_INSERT_ACCESS, {
                    "jti": jti, "family_id": family_id, "workspace_id": ws.id, "client_id": client.client_id,
                    "user_id": user.id, "session_id": session_id, "scope": " ".join(scopes), "created_at": now,
                    "expires_at": now + timedelta(seconds=ACCESS_TTL)})
            if user is not None and session_id is not None and rotate_from is None:
                # the app now holds this session's sid: it gets a logout token when the session ends (a refresh
                # needs no row: its grant made one, and its refresh token names the session as well)
                db.execute(_session_client_insert(db), {
                    "id": str(uuid.uuid4()), "workspace_id": ws.id, "session_id": session_id,
                    "client_id": client.client_id, "user_id": user.id, "created_at": now})
            if rt is not None:
                db.execute(_INSERT_REFRESH, {
                    "token_hash": sha256_hex(rt), "family_id": family_id, "workspace_id": ws.id,
                    "client_id": client.client_id, "user_id": user.id, "session_id": session_id,
                    "scope": " ".join(scopes), "auth_time": auth_time, "amr": list(amr), "created_at": now,
                    "expires_at": now + timedelta(seconds=REFRESH_TTL)})
            if db is not None:  # the grant's event commits with its tokens (an append: no lock, no extra commit)
                self.hub.audit.record("oidc.token.issued", workspace_id=ws.id, actor_id=user.id,
                                      data={"client": client.client_id, "refresh": bool(token.get("refresh_token")),
                                            "scope": " ".join(scopes)}, connection=db)
                db.commit()
        if user is None:  # nothing else to commit: through the group commit
            self.audit("oidc.token.issued", ws.id, client_id=client.client_id, refresh=False, scope=" ".join(scopes))
        return token

    def find_refresh(self, ws_id: str, client_id: str, presented: str):
        """(the presented refresh token's row, its user with the user's workspace, the user's 2FA enrolment), read
        in one statement, when the token is valid for this client; a token already used means a replay — its
        whole family is revoked. It is marked used only when the new tokens are recorded
        (``issue(rotate_from=…)``), in the same transaction."""
        h = sha256_hex(presented)
        now = self.hub.clock()
        with self.hub.read_db() as db:  # the token, its user, their workspace and 2FA enrolment: one statement
            found = db.execute(_REFRESH_WITH_USER, {"h": h}).first()
            row = found[0] if found is not None else None
            if row is None or row.workspace_id != ws_id or row.client_id != client_id \
                    or row.revoked_at is not None or row.expires_at <= now:
                raise InvalidGrantError("Invalid refresh token.")
            if row.used_at is not None:
                family_id, user_id = row.family_id, row.user_id
                user = None
                answer = self._retry_answer(db, row, presented, now)
            else:
                return row, found[1], (enrolled_from(found) if found[1] is not None else None)
        if answer is not None:
            self.audit("oidc.refresh.retried", ws_id, actor_id=user_id, client_id=client_id)
            raise RefreshRetry(answer)
        self._refresh_reused(ws_id, family_id, user_id, client_id)
        return row, user, None  # not reached

    # -- refresh retries --
    def _retry_box(self, presented: str) -> AESGCM:
        """The key of a rotation's kept answer: the server's key for the purpose, keyed again by the presented
        refresh token (256 random bits), so neither a copy of the database nor the server key alone opens it."""
        base = derive_key(self.hub.settings.secret_key, "oidc-refresh-retry").encode()
        return AESGCM(hmac.new(base, presented.encode(), hashlib.sha256).digest())

    def _seal_retry(self, presented: str, token_hash: str, token: dict) -> str | None:
        if not self.hub.settings.oidc_refresh_grace:
            return None
        nonce = secrets.token_bytes(12)
        sealed = self._retry_box(presented).encrypt(nonce, json.dumps(token).encode(), token_hash.encode())
        return base64.urlsafe_b64encode(nonce + sealed).decode()

    def _retry_answer(self, db, row: OidcRefreshToken, presented: str, now: datetime) -> dict | None:
        """The answer a used token's rotation gave, when it is presented again within the grace window and the
        token it was replaced by has not been used (the client never got it); else None (a replay)."""
        grace = self.hub.settings.oidc_refresh_grace
        if not grace or not row.retry_answer or now - row.used_at > timedelta(seconds=grace):
            return None
        try:
            raw = base64.urlsafe_b64decode(row.retry_answer.encode())
            answer = json.loads(self._retry_box(presented).decrypt(raw[:12], raw[12:], row.token_hash.encode()))
        except (ValueError, InvalidTag):
            return None
        successor = db.get(OidcRefreshToken, sha256_hex(answer.get("refresh_token") or ""))
        if successor is None or successor.used_at is not None or successor.revoked_at is not None:
            return None
        return answer

    def _refresh_reused(self, ws_id: str, family_id: str, user_id: str, client_id: str):
        """A used refresh token presented again (or a lost race): revoke the whole family, audit, refuse."""
        self.revoke_family(ws_id, family_id, reason="refresh_reuse")
        self.audit("oidc.refresh.reused", ws_id, actor_id=user_id, client_id=client_id)
        raise InvalidGrantError("Invalid refresh token.")

    def revoke_family(self, ws_id: str, family_id: str, reason: str) -> None:
        """Revoke every refresh and access token of a grant (``family_id`` is a refresh family or a code hash)."""
        now = self.hub.clock()
        with self.hub.db() as db:
            fams = {family_id}
            db.execute(update(OidcRefreshToken).where(OidcRefreshToken.workspace_id == ws_id,
                                                      OidcRefreshToken.family_id.in_(fams),
                                                      OidcRefreshToken.revoked_at.is_(None)).values(revoked_at=now))
            db.execute(update(OidcAccessToken).where(OidcAccessToken.workspace_id == ws_id,
                                                     OidcAccessToken.family_id.in_(fams),
                                                     OidcAccessToken.revoked_at.is_(None)).values(revoked_at=now))
            db.commit()
        log.info("oidc tokens revoked", extra={"reason": reason})

    def revoke_session(self, session_id: str) -> None:
        now = self.hub.clock()
        with self.hub.db() as db:
            db.execute(update(OidcRefreshToken).where(OidcRefreshToken.session_id == session_id,
                                                      OidcRefreshToken.revoked_at.is_(None)).values(revoked_at=now))
            db.execute(update(OidcAccessToken).where(OidcAccessToken.session_id == session_id,
                                                     OidcAccessToken.revoked_at.is_(None)).values(revoked_at=now))
            db.commit()

    def revoke_user(self, ws_id: str, user_id: str) -> None:
        """Revoke every refresh and access token of a user (``hub.accounts``' deprovision listener): what the
        sessions' ends did not reach, such as a grant whose session record is already gone."""
        now = self.hub.clock()
        with self.hub.db() as db:
            for model in (OidcRefreshToken, OidcAccessToken):
                db.execute(update(model).where(model.workspace_id == ws_id, model.user_id == user_id,
                                               model.revoked_at.is_(None)).values(revoked_at=now))
            db.commit()

    def revoke_user_client(self, ws_id: str, user_id: str, client_id: str) -> None:
        """Revoke every refresh and access token of one user at one client (the app was taken from them)."""
        with self.hub.db() as db:
            revoke_client_tokens(db, ws_id, client_id, self.hub.clock(), user_id=user_id)
            db.commit()

    def find_token(self, ws_id: str, value, hint) -> TokenRef | None:
        if not isinstance(value, str) or not value or len(value) > MAX_TOKEN:
            return None
        now = self.hub.clock()
        if value.count(".") == 2:
            with self.hub.db() as db:
                from idp.models import Workspace

                ws = db.get(Workspace, ws_id)
            claims = self.verify(ws, value, typ="at+jwt")
            if claims is None or not isinstance(claims.get("jti"), str):
                return None
            with self.hub.db() as db:
                row = db.get(OidcAccessToken, claims["jti"])
            if row is None and _is_client_token(claims):
                # client credentials tokens are not recorded when issued (they belong to no session or grant):
                # our signature, issuer and expiry are the record, and a revocation adds a row
                exp = claims.get("exp")
                if not _is_int(exp):
                    return None
                return TokenRef("access_token", claims["client_id"], "cc:" + claims["jti"],
                                datetime.fromtimestamp(exp, tz=UTC), False, claims["jti"], claims, now, None,
                                str(claims.get("scope") or ""))
            if row is None or row.workspace_id != ws_id:
                return None
            claims = {**claims, "_session_id": row.session_id}
            return TokenRef("access_token", row.client_id, row.family_id, row.expires_at, row.revoked_at is not None,
                            row.jti, claims, now, row.user_id, row.scope)
        if len(value) > 256:
            return None
        with self.hub.db() as db:
            row = db.get(OidcRefreshToken, sha256_hex(value))
        if row is None or row.workspace_id != ws_id:
            return None
        return TokenRef("refresh_token", row.client_id, row.family_id, row.expires_at,
                        row.revoked_at is not None or row.used_at is not None, row.token_hash,
                        {"_session_id": row.session_id}, now, row.user_id, row.scope)

    # -- the authorization endpoint --
    def authorize(self, ws, req: HttpRequest, session, http_client) -> Answer:
        """Validate, then: a redirect with a code, an OAuth error at the (registered) redirect_uri, the sign-in
        page, or an HTML error page when nothing trustworthy can be redirected to."""
        for key in req.args:
            values = req.args.getlist(key)
            if len(key) > 64 or any(len(v) > MAX_PARAM for v in values):
                return Answer(400, page=("Bad request", "The sign-in request is too large."))
            if len(values) > 1:  # RFC 6749 3.1: parameters MUST NOT be repeated (which client_id would count?)
                return Answer(400, page=("This sign-in link is not valid",
                                         "The app sent a parameter more than once. Nothing was sent back to it."))
        server = Provider(self, ws, http_client)
        try:
            oreq = _Request(req, self.endpoint(ws, "authorize"))
            grant = server.get_consent_grant(oreq)
            redirect_uri = grant.redirect_uri
        except OAuth2Error as err:
            if err.redirect_uri:  # only set by authlib after the client's redirect_uri matched exactly
                return self._error_redirect(ws, err, req.args.get("state"))
            return Answer(400, page=("This sign-in link is not valid",
                                     f"The app sent an invalid request ({err.error}: "
                                     f"{(err.description or '')[:200]}). Nothing was sent back to it."))
        except (ValueError, UnicodeError, TypeError):
            return Answer(400, page=("Bad request", "The sign-in request could not be read."))
        client: Client = oreq.client
        args = req.args
        state = args.get("state")

        def fail(cls, desc):
            return self._error_redirect(ws, cls(desc, redirect_uri=redirect_uri), state)

        for unsupported in ("request", "request_uri"):
            if args.get(unsupported) is not None:
                return fail(InvalidRequestError, f"'{unsupported}' is not supported.")
        if args.get("response_mode") not in (None, "query"):
            return fail(InvalidRequestError, "Only response_mode=query is supported.")
        prompt = set((args.get("prompt") or "").split())
        if "none" in prompt and len(prompt) > 1:
            return fail(InvalidRequestError, "prompt=none cannot be combined with other values.")
        max_age = args.get("max_age")
        if max_age is not None:
            if not max_age.isdigit() or len(max_age) > 9:
                return fail(InvalidRequestError, "Invalid 'max_age'.")
            max_age = int(max_age)
        try:
            wanted_acr = requested_acr(args.get("acr_values"), args.get("claims"))
        except ValueError as exc:
            return fail(InvalidRequestError, str(exc))
        if wanted_acr == ACR_UNSUPPORTED:  # an essential acr we cannot give: a failed authentication (Core 5.5.1.1)
            self.audit("oidc.authorize.denied", ws.id, actor_id=session.user_id if session else None,
                       client_id=client.client_id, rule="essential_acr")
            return fail(AccessDeniedError, "The requested authentication context is not supported.")
        now = self.hub.clock()
        reauth = "login" in prompt or (
            session is not None and max_age is not None and
            (session.auth_time or session.created_at) + timedelta(seconds=max_age) < now)
        if session is None or reauth:
            if "none" in prompt:
                return self._error_redirect(ws, _LoginRequired(redirect_uri=redirect_uri), state)
            return Answer(302, location=self._login_url(ws, client, req, force=session is not None))
        app_policies = self.hub.app_policies(ws, client.client_id)
        decision = self.hub.decide(ws, http_client, user_id=session.user_id, methods=session.amr,
                                   app=client.client_id, app_policies=app_policies)
        if decision.effect == "deny":
            self.audit("oidc.authorize.denied", ws.id, actor_id=session.user_id, client_id=client.client_id,
                       rule=decision.rule)
            if decision.rule == "app_assignment":  # the one reason text, told to the app (error_description)
                back = fail(AccessDeniedError, decision.reason)
                if "none" in prompt:  # no page may be shown: straight back to the app
                    return back
                # a page that tells the person whom to ask, then back to the app with access_denied (RFC 6749
                # 4.1.2.1): the app learns of the refusal; nothing is shown that the person could not already see
                return Answer(403, template=("app_denied.html", {
                    "app_name": client.row.name or client.client_id, "reason": decision.reason,
                    "continue_url": back.location}))
            return fail(AccessDeniedError, "Access is not allowed by the workspace's policies.")
        user = self.active_user(session.user_id, session.id, ws.id)
        if user is None:
            return fail(AccessDeniedError, "The account is not active.")
        # A second factor is missing: the policies want one (the app's require_mfa, the user's own 2FA), or the
        # app asked for the MFA authentication context. The user goes through the sign-in's second-factor step
        # (or sets one up), which makes a session with the factor and comes back here; never with prompt=none.
        step, why = (decision, "policy") if decision.effect in ("mfa", "enroll") else (None, None)
        wants = ("phr",) if wanted_acr == ACR_PHR else ("mfa",)
        if step is None and wanted_acr == ACR_PHR and acr_claim(session.amr) != ACR_PHR:
            step, why = self.hub.decide(ws, http_client, user_id=user.id, methods=session.amr,
                                        app=client.client_id, app_policies={
                                            **app_policies, "require_phishing_resistant_mfa": True}), "acr"
        if step is None and wanted_acr == ACR_MFA and acr_claim(session.amr) not in (ACR_MFA, ACR_PHR):
            step, why = self.hub.decide(ws, http_client, user_id=user.id, methods=session.amr,
                                        app=client.client_id, app_policies={**app_policies, "require_mfa": True}), \
                "acr"
        if step is not None and why == "acr":
            if step.effect not in ("mfa", "enroll"):
                self.audit("oidc.authorize.denied", ws.id, actor_id=user.id, client_id=client.client_id,
                           rule=step.rule or "acr")
                return fail(AccessDeniedError, "A second factor is required and cannot be used here.")
        if step is not None:
            if "none" in prompt:
                self.audit("oidc.authorize.step_up_required", ws.id, actor_id=user.id, client_id=client.client_id,
                           reason=why, prompt="none")
                return self._error_redirect(ws, _InteractionRequired(redirect_uri=redirect_uri), state)
            if not step.methods:  # no factor the policies allow: nothing to offer (fail closed)
                self.audit("oidc.authorize.denied", ws.id, actor_id=user.id, client_id=client.client_id,
                           rule=step.rule or "second_factor")
                return fail(AccessDeniedError, "A second factor is required and none is allowed.")
            self.audit("oidc.authorize.step_up", ws.id, actor_id=user.id, client_id=client.client_id, reason=why,
                       step=step.effect)
            return Answer(302, step_up=StepUp(user_id=user.id, email=user.email, amr=tuple(session.amr),
                                              effect=step.effect, choices=tuple(step.methods),
                                              next=self._resume_url(ws, req), app=client.client_id, wants=wants))
        oreq.idhub = {"user_id": user.id, "session_id": session.id, "amr": list(session.amr),
                      "auth_time": session.auth_time or session.created_at}
        try:
            status, _body, headers = grant.create_authorization_response(redirect_uri, user)
        except OAuth2Error as err:
            return self._error_redirect(ws, err, state)
        location = dict(headers)["Location"]
        self.audit("oidc.authorize", ws.id, actor_id=user.id, client_id=client.client_id)
        return Answer(302, location=_add_param(location, "iss", self.issuer(ws)))

    @staticmethod
    def _resume_url(ws, req: HttpRequest) -> str:
        # Come back to this very request, minus what asked for the new sign-in (else it would loop).
        kept = [(k, v) for k in req.args for v in req.args.getlist(k) if k not in ("prompt", "max_age")]
        # Back through the resume page: after the sign-in form's POST, a chain of redirects ending at the app
        # would be blocked by Chrome (CSP form-action 'self' applies to the redirects of a form submission).
        return f"/w/{ws.slug}/oauth2/resume?" + urlencode(kept)

    def _login_url(self, ws, client: Client, req: HttpRequest, force: bool) -> str:
        params = {"next": self._resume_url(ws, req), "app": client.client_id}
        if force:
            params["prompt"] = "login"
        return f"/w/{ws.slug}/login?" + urlencode(params)

    def _error_redirect(self, ws, err: OAuth2Error, state) -> Answer:
        params = [("error", err.error)]
        if err.description:
            params.append(("error_description", err.description[:200]))
        if state and isinstance(state, str):
            params.append(("state", state))
        params.append(("iss", self.issuer(ws)))
        loc = err.redirect_uri
        for k, v in params:
            loc = _add_param(loc, k, v)
        return Answer(302, location=loc)

    # -- the token, revocation and introspection endpoints --
    def _oauth_request(self, ws, req: HttpRequest, name: str) -> _Request | Answer:
        if req.method != "POST":
            return Answer(405, {"error": "invalid_request", "error_description": "Use POST."})
        for key in req.form:
            if len(key) > 64 or any(len(v) > MAX_TOKEN for v in req.form.getlist(key)):
                return Answer(400, {"error": "invalid_request", "error_description": "Parameter too large."})
            if len(req.form.getlist(key)) > 1:
                return Answer(400, {"error": "invalid_request", "error_description": f"Repeated '{key[:64]}'."})
        auth = req.headers.get("Authorization") or ""
        if auth and (req.form.get("client_secret") is not None or req.form.get("client_assertion") is not None):
            return Answer(400, {"error": "invalid_request",
                                "error_description": "Use exactly one client authentication method."})
        if auth and not auth.lower().startswith("basic "):
            return Answer(401, {"error": "invalid_client"}, [("WWW-Authenticate", 'Basic realm="idhub"')])
        if req.form.get("client_assertion") is not None and req.form.get("client_secret") is not None:
            return Answer(400, {"error": "invalid_request",
                                "error_description": "Use exactly one client authentication method."})
        return _Request(req, self.endpoint(ws, name))

    def _run(self, fn) -> Answer:
        try:
            ans = fn()
        except OAuth2Error as err:
            status, body, headers = err()
            ans = Answer(status, dict(body) if not isinstance(body, dict) else body, list(headers or []))
        except (ValueError, UnicodeError, TypeError, KeyError):
            ans = Answer(400, {"error": "invalid_request", "error_description": "The request could not be read."})
        if ans.status == 401 and not any(k.lower() == "www-authenticate" for k, _ in ans.headers):
            ans.headers.append(("WWW-Authenticate", 'Basic realm="idhub"'))
        ans.headers = [(k, v) for k, v in ans.headers if k.lower() not in ("content-type",)]
        ans.headers += [("Cache-Control", "no-store"), ("Pragma", "no-cache")]
        return ans

    def token(self, ws, req: HttpRequest, http_client) -> Answer:
        self.maybe_purge()
        oreq = self._oauth_request(ws, req, "token")
        if isinstance(oreq, Answer):
            return self._run(lambda: oreq)
        server = Provider(self, ws, http_client)
        return self._run(lambda: server.create_token_response(oreq))

    def revoke(self, ws, req: HttpRequest, http_client) -> Answer:
        oreq = self._oauth_request(ws, req, "revoke")
        if isinstance(oreq, Answer):
            return self._run(lambda: oreq)
        server = Provider(self, ws, http_client)
        return self._run(lambda: server.create_endpoint_response("revocation", oreq))

    def introspect(self, ws, req: HttpRequest, http_client) -> Answer:
        oreq = self._oauth_request(ws, req, "introspect")
        if isinstance(oreq, Answer):
            return self._run(lambda: oreq)
        server = Provider(self, ws, http_client)
        return self._run(lambda: server.create_endpoint_response("introspection", oreq))

    # -- userinfo --
    def userinfo(self, ws, req: HttpRequest) -> Answer:
        auth = req.headers.get("Authorization") or ""
        scheme, _, value = auth.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return Answer(401, {"error": "invalid_token"}, [("WWW-Authenticate", 'Bearer realm="idhub"')])
        ref = self.find_token(ws.id, value.strip(), "access_token")
        if ref is None or ref.kind != "access_token" or ref.is_expired() or ref.is_revoked() or not ref.user_id:
            return Answer(401, {"error": "invalid_token"},
                          [("WWW-Authenticate", 'Bearer realm="idhub", error="invalid_token"')])
        user = self.active_user(ref.user_id, ref.claims.get("_session_id"), ws.id)
        if user is None:
            return Answer(401, {"error": "invalid_token"},
                          [("WWW-Authenticate", 'Bearer realm="idhub", error="invalid_token"')])
        scopes = scope_to_list(ref.scope) or []
        if "openid" not in scopes:
            return Answer(403, {"error": "insufficient_scope"},
                          [("WWW-Authenticate", 'Bearer realm="idhub", error="insufficient_scope"')])
        if not self.may_use(ws, user, ref.client_id):  # unassigned since the token was issued: no longer valid
            self.audit("oidc.userinfo.denied", ws.id, actor_id=user.id, client_id=ref.client_id,
                       rule="app_assignment")
            return Answer(401, {"error": "invalid_token", "error_description": NOT_ASSIGNED},
                          [("WWW-Authenticate", 'Bearer realm="idhub", error="invalid_token"')])
        return Answer(200, {"sub": user.id, **self.user_claims(user, scopes)}, [("Cache-Control", "no-store")])

    def may_use(self, ws, user: User, client_id: str) -> bool:
        """Whether the app's assignment (the policy engine's ``app_assignment`` rule) lets ``user`` use it now: for
        a request of the app's server (userinfo), where only the assignment is in question."""
        app_policies = self.hub.app_policies(ws, client_id)
        if app_policies.get("assigned_groups") is None:
            return True
        ctx = self.hub.policy_context(ws, "", user_id=user.id, account=user, app=client_id,
                                      app_policies={"assigned_groups": app_policies["assigned_groups"]})
        return self._assignment_engine.evaluate(ctx).allowed

    # -- RP-initiated logout --
    def end_session(self, ws, req: HttpRequest, session, confirmed: bool = False) -> tuple[Answer, bool]:
        """(answer, end the browser's session?) for the end-session endpoint.

        With a valid ``id_token_hint`` of the browser's own session, the session ends at once. Without one (or
        with a hint about another session) the user is asked first: a "Sign out of idhub?" page whose form
        (CSRF-protected, checked by the web layer, which then passes ``confirmed``) ends the session — so no
        other site can sign users out by linking here. ``post_logout_redirect_uri`` is only honoured when it is
        registered by the client named by ``client_id`` or by the hint's audience."""
        values = req.form if req.method == "POST" else req.args
        for key in values:
            if len(key) > 64 or len(values.getlist(key)) > 1 or any(len(v) > MAX_TOKEN for v in values.getlist(key)):
                return Answer(400, page=("Bad request", "The sign-out request is not valid.")), False
        hint = values.get("id_token_hint")
        client_id = values.get("client_id")
        post_logout = values.get("post_logout_redirect_uri")
        state = values.get("state")
        claims = None
        if hint:
            claims = self.verify(ws, hint, typ="jwt")  # an ID token: not an access or logout token (header typ)
            if claims is None:
                return Answer(400, page=("This sign-out link is not valid",
                                         "The app's sign-out request carried an invalid token.")), False
            aud = claims.get("aud")
            auds = aud if isinstance(aud, list) else [aud]
            if client_id and client_id not in auds:
                return Answer(400, page=("This sign-out link is not valid",
                                         "The app's sign-out request is inconsistent.")), False
            client_id = client_id or (auds[0] if len(auds) == 1 else None)
        client = None
        if client_id:
            with self.hub.db() as db:
                row = find_client(db, ws.id, client_id)
            client = Client(row) if row else None
        if post_logout is not None and (client is None or not client.check_post_logout_redirect_uri(post_logout)):
            return Answer(400, page=("This sign-out link is not valid",
                                     "The app asked to return to an address it has not registered. "
                                     "You are still signed in.")), False
        app_name = (client.row.name or client.row.client_id) if client else None
        end = False
        if session is not None:
            own = claims is not None and (claims.get("sid") == self.sid(session.id) or
                                          (claims.get("sid") is None and claims.get("sub") == session.user_id))
            if not own and not confirmed:
                fields = [(k, v) for k, v in (("client_id", client.client_id if client else None),
                                              ("post_logout_redirect_uri", post_logout), ("state", state)) if v]
                return Answer(200, template=("oidc_logout.html", {"fields": fields, "app_name": app_name,
                                                                  "signed_out": False})), False
            end = True
            self.audit("oidc.end_session", ws.id, actor_id=session.user_id,
                       client_id=client.client_id if client else None,
                       confirmed=not own)
        if post_logout:
            loc = _add_param(post_logout, "state", state) if state else post_logout
            if confirmed:
                # The answer to our own form's POST: a redirect to the app would be blocked by the browser
                # (CSP form-action 'self' covers a form submission's redirects), so a page navigates there.
                return Answer(200, template=("oidc_logout.html", {"fields": [], "app_name": app_name,
                                                                  "signed_out": True, "return_to": loc})), end
            return Answer(302, location=loc), end
        return Answer(200, template=("oidc_logout.html", {"fields": [], "app_name": app_name,
                                                          "signed_out": True})), end


class _LoginRequired(OAuth2Error):
    error = "login_required"


class _InteractionRequired(OAuth2Error):
    error = "interaction_required"


def _b64_json(segment: str) -> dict | None:
    value = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    return value if isinstance(value, dict) else None


def _is_client_token(claims: dict) -> bool:
    """An access token of the client credentials grant: issued to the client itself, for no user session."""
    cid = claims.get("client_id")
    return isinstance(cid, str) and claims.get("sub") == cid and claims.get("aud") == cid and "sid" not in claims \
        and isinstance(claims.get("jti"), str)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _pick_key(jwks: dict, header: dict):
    """The one registered public key that fits the assertion's ``alg`` (and ``kid``, when it names one)."""
    alg, kid = header.get("alg"), header.get("kid")
    kty = {"RS256": "RSA", "ES256": "EC"}.get(alg)
    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    found = []
    for k in keys if isinstance(keys, list) else []:
        if not isinstance(k, dict) or k.get("kty") != kty or PRIVATE_JWK_MEMBERS & set(k):
            continue
        if k.get("use") not in (None, "sig") or k.get("alg") not in (None, alg):
            continue
        if kty == "EC" and k.get("crv") != "P-256":
            continue
        if kid is not None and k.get("kid") != kid:
            continue
        found.append(k)
    if len(found) != 1:
        return None
    try:
        return jwk.import_key(found[0])
    except (JoseError, ValueError, TypeError, KeyError):
        return None


def revoke_client_tokens(db, ws_id: str, client_id: str, now: datetime, user_id: str | None = None) -> int:
    """In ``db``'s transaction: revoke every refresh and access token issued to one client (of one user, or of
    everyone); how many were revoked."""
    n = 0
    for model in (OidcRefreshToken, OidcAccessToken):
        where = [model.workspace_id == ws_id, model.client_id == client_id, model.revoked_at.is_(None)]
        if user_id is not None:
            where.append(model.user_id == user_id)
        n += db.execute(update(model).where(*where).values(revoked_at=now)
                        .execution_options(synchronize_session=False)).rowcount
    return n


def _session_client_insert(conn):
    """The prebuilt ``INSERT … ON CONFLICT (session_id, client_id) DO NOTHING`` of ``conn``'s dialect."""
    name = conn.dialect.name
    stmt = _INSERT_SESSION_CLIENT.get(name)
    if stmt is None:
        stmt = _INSERT_SESSION_CLIENT[name] = _insert_ignore(conn, OidcSessionClient.__table__,
                                                             ("session_id", "client_id"))
    return stmt


def _insert_ignore(db, model, keys: tuple[str, ...]):
    """An INSERT that does nothing when a row with the same ``keys`` (a unique constraint) exists."""
    name = db.dialect.name if hasattr(db, "dialect") else db.get_bind().dialect.name
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    elif name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    else:
        raise NotImplementedError(f"no INSERT … ON CONFLICT for dialect {name}")
    return dialect_insert(model).on_conflict_do_nothing(index_elements=list(keys))


def _add_param(uri: str, key: str, value: str) -> str:
    parts = urlsplit(uri)
    sep = "&" if parts.query else ""
    query = parts.query + sep + urlencode({key: value})
    return parts._replace(query=query).geturl()


__all__ = ["Answer", "HttpRequest", "OidcService", "InvalidClientError"]
