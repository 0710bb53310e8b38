"""OpenID Connect relying party for upstream IdPs (Okta, Azure AD, generic), on authlib's OAuth 2.0 client.

Plain Python: HTTP goes through an injected ``requests.Session``; the caller keeps state, nonce and the PKCE
verifier (bound to the login flow, which is bound to the browser) and hands them back at the callback. A
connection registered over the admin API or console (``federation.config.guarded``) does not use that session: its
discovery document, keys and groups are fetched by ``idp.netfetch`` and its token request goes through
``idp.netfetch``'s adapter (resolved once, internal addresses refused unless allow-listed, connected to the checked
address, no redirects) — an admin's issuer URL cannot make idhub call an internal service.

    rp = OidcRp(http)
    url, pending = rp.start(conn, redirect_uri)            # pending = {"state", "nonce", "verifier", ...}
    identity = rp.finish(conn, redirect_uri, callback_params, pending)   # raises UpstreamError(check=...)

Checks: discovery issuer equals the configured issuer (or, for Azure AD's multi-tenant endpoints, the
``{tenantid}`` template); authorization code + PKCE S256; ``state`` compared in constant time; RFC 9207 ``iss``
compared when present and required when the IdP advertises it; the ID token's ``alg`` from an explicit allowlist
(RS256/ES256/PS256 — never ``none`` or HS*), its key from the IdP's JWKS only (refreshed once on an unknown
``kid``; embedded ``jwk``/``jku``/``x5u`` ignored), ``iss``, ``aud``/``azp``, ``exp``/``iat``/``nbf`` with a small
skew, ``nonce``; Azure AD's ``tid`` against the issuer and the allowed tenants; groups overage detected, and
resolved only through a configured ``groups_endpoint``.

Re-authentication (``start(..., reauth=True)``): the request says ``prompt=login`` and ``max_age=0``, and the ID
token's ``auth_time`` must then say the person signed in just now (after the request, at most
``federation.base.REAUTH_MAX_AGE`` seconds ago); an IdP that answers from its existing session is refused with
check ``auth_time``.
"""

from __future__ import annotations

import base64
import hmac
import json
import secrets
import threading
import time
from datetime import UTC, datetime

from federation.base import UpstreamError, UpstreamIdentity, check_fresh
from federation.config import guarded
from federation.presets import map_claims

ALGORITHMS = ("RS256", "ES256", "PS256")
SKEW = 120  # seconds of clock difference tolerated
MAX_IAT_AGE = 600  # an ID token older than this at the callback is refused
DISCOVERY_TTL = 3600
JWKS_TTL = 3600
JWKS_MIN_REFRESH = 10  # at most one JWKS refresh per issuer every 10 s (unknown-kid floods)
HTTP_TIMEOUT = 10
MAX_BODY = 512 * 1024
TENANT = "{tenantid}"
MULTI_TENANT_ALIASES = ("organizations", "common")
MAX_PARAM = 4096


def _b64json(segment: str) -> dict:
    pad = "=" * (-len(segment) % 4)
    try:
        data = json.loads(base64.urlsafe_b64decode(segment + pad))
    except (ValueError, TypeError):
        raise UpstreamError("id_token", "the ID token is malformed", "") from None
    if not isinstance(data, dict):
        raise UpstreamError("id_token", "the ID token is malformed", "")
    return data


def _eq(a: str, b: str) -> bool:
    return hmac.compare_digest(str(a).encode(), str(b).encode())


def multi_tenant(conn: dict) -> bool:
    issuer = conn.get("issuer", "")
    return TENANT in issuer or any(f"/{a}/" in issuer for a in MULTI_TENANT_ALIASES)


class OidcRp:
    def __init__(self, http=None, clock=lambda: datetime.now(UTC)):
        if http is None:
            import requests

            http = requests.Session()
        self.http = http
        self.clock = clock
        self._lock = threading.Lock()
        self._discovery: dict[str | tuple[str, str], tuple[float, dict]] = {}
        self._jwks: dict[str | tuple[str, str], tuple[float, object]] = {}

    # ---- HTTP ---------------------------------------------------------------------------------------------------
    def _get_json(self, url: str, check: str, headers: dict | None = None, conn: dict | None = None,
                  field: str = "issuer") -> dict:
        if guarded(conn):
            return self._get_json_guarded(url, check, headers, field)
        import requests

        try:
            resp = self.http.get(url, timeout=HTTP_TIMEOUT, headers=headers or {}, allow_redirects=False)
        except requests.RequestException as exc:
            raise UpstreamError("unavailable", f"the identity provider could not be reached ({type(exc).__name__})",
                                f"Check that idhub can reach {url}.") from None
        if resp.status_code != 200:
            raise UpstreamError(check, f"{url} answered HTTP {resp.status_code}", "Check the issuer URL.")
        if len(resp.content) > MAX_BODY:
            raise UpstreamError(check, f"{url} answered with a document that is too large", "")
        try:
            data = resp.json()
        except ValueError:
            raise UpstreamError(check, f"{url} did not answer JSON", "Check the issuer URL.") from None
        if not isinstance(data, dict):
            raise UpstreamError(check, f"{url} did not answer a JSON object", "")
        return data

    def _get_json_guarded(self, url: str, check: str, headers: dict | None, field: str) -> dict:
        from idp import netfetch

        try:
            body = netfetch.fetch(url, field=field, timeout=HTTP_TIMEOUT, limit=MAX_BODY, accept="application/json",
                                  headers=headers)
        except netfetch.FetchError as exc:
            raise UpstreamError(check, f"{url[:300]}: {exc}", "Check the issuer URL. idhub calls only public "
                                "addresses for connections added in the admin console or API; the operator can "
                                f"allow internal networks with {netfetch.ALLOW_ENV}.") from None
        try:
            data = json.loads(body)
        except ValueError:
            raise UpstreamError(check, f"{url} did not answer JSON", "Check the issuer URL.") from None
        if not isinstance(data, dict):
            raise UpstreamError(check, f"{url} did not answer a JSON object", "")
        return data

    # ---- discovery ------------------------------------------------------------------------------------------------
    def discovery_url(self, conn: dict) -> str:
        issuer = conn["issuer"].replace(TENANT, MULTI_TENANT_ALIASES[0]).rstrip("/")
        return issuer + "/.well-known/openid-configuration"

    def metadata(self, conn: dict, *, refresh: bool = False) -> dict:
        """The IdP's discovery document, cached ``DISCOVERY_TTL`` seconds and checked against the issuer."""
        # a copy fetched without the checks is never used for a guarded connection
        key = (conn["issuer"], "guarded") if guarded(conn) else conn["issuer"]
        now = time.monotonic()
        with self._lock:
            hit = self._discovery.get(key)
        if hit and not refresh and now - hit[0] < DISCOVERY_TTL:
            return hit[1]
        doc = self._get_json(self.discovery_url(conn), "discovery", conn=conn, field="issuer")
        advertised = doc.get("issuer")
        if not isinstance(advertised, str) or not self._issuer_matches_config(conn, advertised):
            raise UpstreamError("issuer", f"the discovery document names issuer {str(advertised)[:200]!r}, not "
                                f"{conn['issuer']!r}", "Set issuer to exactly the IdP's issuer (Okta: the org "
                                "URL or https://<org>.okta.com/oauth2/<server>; Azure AD: "
                                "https://login.microsoftonline.com/<tenant>/v2.0).")
        _check_discovery(doc)
        algs = doc.get("id_token_signing_alg_values_supported") or ["RS256"]
        if not set(algs) & set(ALGORITHMS):
            raise UpstreamError("algorithm", f"the IdP signs ID tokens only with {[a[:20] for a in algs][:10]}",
                                f"idhub accepts {', '.join(ALGORITHMS)}.")
        with self._lock:
            self._discovery[key] = (now, doc)
        return doc

    def _issuer_matches_config(self, conn: dict, advertised: str) -> bool:
        configured = conn["issuer"].rstrip("/")
        advertised = advertised.rstrip("/")
        if not multi_tenant(conn):
            return advertised == configured
        template = configured
        for alias in MULTI_TENANT_ALIASES:
            template = template.replace(f"/{alias}/", f"/{TENANT}/")
        return advertised == template

    def expected_issuer(self, conn: dict, doc: dict, tid: str | None) -> str:
        if not multi_tenant(conn):
            return doc["issuer"]
        if not tid:
            raise UpstreamError("tenant", "the ID token has no tenant id (tid)", "")
        return doc["issuer"].replace(TENANT, tid)

    # ---- keys ---------------------------------------------------------------------------------------------------
    def _keyset(self, conn: dict, doc: dict, *, refresh: bool = False, url: str | None = None):
        from joserfc.jwk import KeySet

        url = url or doc["jwks_uri"]
        now = time.monotonic()
        key = (url, "guarded") if guarded(conn) else url
        with self._lock:
            hit = self._jwks.get(key)
        if hit and (now - hit[0] < JWKS_TTL) and (not refresh or now - hit[0] < JWKS_MIN_REFRESH):
            return hit[1]
        data = self._get_json(url, "jwks", conn=conn, field="jwks_uri")
        if not isinstance(data.get("keys"), list):
            raise UpstreamError("jwks", "the IdP's JWKS has no list of keys", "")
        keys = [k for k in data["keys"] if isinstance(k, dict) and k.get("kty") in ("RSA", "EC")
                and k.get("use", "sig") == "sig" and not ({"d", "p", "q", "k"} & set(k))]
        try:
            ks = KeySet.import_key_set({"keys": keys})
        except Exception:
            raise UpstreamError("jwks", "the IdP's JWKS could not be read", "") from None
        with self._lock:
            self._jwks[key] = (now, ks)
        return ks

    def _key_for(self, conn: dict, doc: dict, header: dict):
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise UpstreamError("id_token", "the ID token's kid is not a string", "")
        urls = [doc["jwks_uri"]]
        if conn.get("preset") == "azure_ad" and kid is not None:
            # Azure AD signs the tokens of an app with custom signing keys (claims mapping) with a key published
            # only at jwks_uri?appid={client_id}; it is looked up there when the tenant's keys do not know the kid
            urls.append(app_jwks_uri(doc["jwks_uri"], conn["client_id"]))
        for url in urls:
            for attempt in (False, True):
                ks = self._keyset(conn, doc, refresh=attempt, url=url)
                matches = [k for k in ks.keys if (kid is None or k.kid == kid)]
                if kid is None and len(matches) > 1:
                    matches = [k for k in matches if _kty_for(header["alg"]) == k.key_type]
                if len(matches) >= 1 and (kid is not None or len(matches) == 1):
                    return matches[0]
        raise UpstreamError("signature", f"the ID token was signed with a key the IdP does not publish "
                            f"(kid {str(kid)[:64]!r})", "The IdP's signing keys are read from its jwks_uri.")

    # ---- the flow -------------------------------------------------------------------------------------------------
    def start(self, conn: dict, redirect_uri: str, *, login_hint: str = "", reauth: bool = False) -> tuple[str, dict]:
        """The authorization URL and what the caller must keep until the callback. ``reauth``: the person must
        authenticate again at the IdP (``prompt=login``, ``max_age=0``; ``auth_time`` is checked at the callback)."""
        from authlib.integrations.requests_client import OAuth2Session

        doc = self.metadata(conn)
        state, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(64)
        client = OAuth2Session(conn["client_id"], scope=" ".join(conn.get("scopes") or ["openid"]),
                               redirect_uri=redirect_uri, code_challenge_method="S256")
        extra = {"login_hint": login_hint} if login_hint else {}
        pending = {"state": state, "nonce": nonce, "verifier": verifier, "issuer": conn["issuer"]}
        if reauth:
            extra.update(prompt="login", max_age="0")
            pending.update(max_age=0, started=self.clock().timestamp())
        url, _ = client.create_authorization_url(doc["authorization_endpoint"], state=state, nonce=nonce,
                                                 code_verifier=verifier, **extra)
        return url, pending

    def finish(self, conn: dict, redirect_uri: str, params: dict, pending: dict) -> UpstreamIdentity:
        """Check the callback, redeem the code, validate the ID token, map the claims."""
        for k, v in params.items():
            if not isinstance(v, str) or len(v) > MAX_PARAM:
                raise UpstreamError("callback", f"the callback parameter {str(k)[:40]!r} is malformed", "")
        state = params.get("state", "")
        if not state or not _eq(state, pending.get("state", "")):
            raise UpstreamError("state", "the callback's state does not belong to this sign-in", "")
        doc = self.metadata(conn)
        if "iss" in params:
            if not self._callback_issuer_ok(conn, doc, params["iss"]):
                raise UpstreamError("issuer", f"the callback came from issuer {params['iss'][:200]!r} (mix-up)",
                                    "The answer was issued by another identity provider than this connection's.")
        elif doc.get("authorization_response_iss_parameter_supported") is True:
            raise UpstreamError("issuer", "the IdP advertises RFC 9207 but the callback has no iss", "")
        if params.get("error"):
            desc = params.get("error_description", "")[:300]
            raise UpstreamError("idp_error", f"the identity provider answered {params['error'][:100]}: {desc}",
                                "See the IdP's sign-in logs for the reason.")
        code = params.get("code", "")
        if not code:
            raise UpstreamError("callback", "the callback has no authorization code", "")
        tokens = self._redeem(conn, doc, redirect_uri, code, pending["verifier"])
        claims = self.validate_id_token(conn, doc, tokens.get("id_token"), pending["nonce"])
        if pending.get("max_age") is not None:
            self._check_auth_time(claims, pending)
        return self.identity(conn, claims, tokens.get("access_token"))

    def _check_auth_time(self, claims: dict, pending: dict) -> None:
        """With ``max_age`` in the request the ID token must carry ``auth_time`` (OIDC Core 3.1.2.1), and for a
        re-authentication it must be fresh."""
        auth_time = claims.get("auth_time")
        if not isinstance(auth_time, (int, float)) or isinstance(auth_time, bool):
            auth_time = None
        check_fresh(auth_time, float(pending.get("started") or 0), self.clock().timestamp(), SKEW, "auth_time",
                    "ID token's auth_time",
                    "The IdP must honour prompt=login and max_age=0 and send auth_time in the ID token (Azure AD: "
                    "add the optional claim auth_time to the app's ID token).")

    def _callback_issuer_ok(self, conn: dict, doc: dict, iss: str) -> bool:
        if not multi_tenant(conn):
            return _eq(iss, doc["issuer"])
        prefix, _, suffix = doc["issuer"].partition(TENANT)
        if not (iss.startswith(prefix) and iss.endswith(suffix)):
            return False
        tid = iss[len(prefix): len(iss) - len(suffix)]
        return tid in conn.get("allowed_tenants", [])

    def _redeem(self, conn: dict, doc: dict, redirect_uri: str, code: str, verifier: str) -> dict:
        import requests
        from authlib.integrations.base_client.errors import OAuthError
        from authlib.integrations.requests_client import OAuth2Session

        methods = doc.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
        if not conn.get("client_secret"):
            method = "none"
        elif "client_secret_basic" in methods:
            method = "client_secret_basic"
        else:
            method = "client_secret_post"
        client = OAuth2Session(conn["client_id"], conn.get("client_secret"), redirect_uri=redirect_uri,
                               token_endpoint_auth_method=method)
        from idp import netfetch

        if guarded(conn):  # the token endpoint came from a discovery document an admin's issuer pointed to
            client.trust_env = False
            adapter = netfetch.GuardedAdapter("token_endpoint")
            client.mount("https://", adapter)
            client.mount("http://", adapter)
        else:
            client.headers.update(self.http.headers)
            for prefix, adapter in getattr(self.http, "adapters", {}).items():
                client.mount(prefix, adapter)
        try:
            token = client.fetch_token(doc["token_endpoint"], grant_type="authorization_code", code=code,
                                       code_verifier=verifier, timeout=HTTP_TIMEOUT)
        except netfetch.FetchError as exc:
            raise UpstreamError("token", f"the token request was not sent ({exc})",
                                f"idhub calls only public addresses for connections added in the admin console or "
                                f"API; the operator can allow internal networks with {netfetch.ALLOW_ENV}.") from None
        except OAuthError as exc:
            raise UpstreamError("token", f"the IdP refused the code ({exc.error})",
                                "Check the client id and secret, and that the redirect URI registered at the IdP "
                                "is this connection's callback.") from None
        except (requests.RequestException, ValueError) as exc:
            raise UpstreamError("unavailable", f"the token request failed ({type(exc).__name__})", "") from None
        finally:
            client.close()
        if not isinstance(token, dict) or not token.get("id_token"):
            raise UpstreamError("id_token", "the IdP answered without an ID token", "Request the openid scope.")
        return dict(token)

    def validate_id_token(self, conn: dict, doc: dict, id_token, nonce: str) -> dict:
        from joserfc import jwt
        from joserfc.errors import JoseError

        if not isinstance(id_token, str) or id_token.count(".") != 2 or len(id_token) > 64 * 1024:
            raise UpstreamError("id_token", "the ID token is malformed", "")
        header = _b64json(id_token.split(".", 1)[0])
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise UpstreamError("algorithm", f"the ID token is signed with {str(alg)[:20]!r}",
                                f"idhub accepts {', '.join(ALGORITHMS)}; configure the IdP to sign with RS256.")
        if "crit" in header:
            raise UpstreamError("id_token", "the ID token has critical header parameters idhub does not know", "")
        key = self._key_for(conn, doc, header)
        try:
            token = jwt.decode(id_token, key, algorithms=[alg])
        except JoseError:
            raise UpstreamError("signature", "the ID token's signature is not valid",
                                "The token was not signed by this IdP's published keys.") from None
        claims = dict(token.claims)
        now = self.clock().timestamp()
        preset = conn.get("preset", "generic")
        tid = claims.get("tid") if isinstance(claims.get("tid"), str) else None
        if preset == "azure_ad" or multi_tenant(conn):
            self._check_tenant(conn, doc, claims, tid)
        expected_iss = self.expected_issuer(conn, doc, tid)
        if not isinstance(claims.get("iss"), str) or not _eq(claims["iss"], expected_iss):
            raise UpstreamError("issuer", f"the ID token was issued by {str(claims.get('iss'))[:200]!r}, not "
                                f"{expected_iss!r}", "Check the connection's issuer.")
        aud = claims.get("aud")
        auds = [aud] if isinstance(aud, str) else (aud if isinstance(aud, list) else [])
        if conn["client_id"] not in auds:
            raise UpstreamError("audience", "the ID token is for another client",
                                "Check the connection's client_id.")
        azp = claims.get("azp")
        if (len(auds) > 1 or azp is not None) and azp != conn["client_id"]:
            raise UpstreamError("audience", "the ID token's authorized party (azp) is another client", "")
        for name in ("exp", "iat"):
            if not isinstance(claims.get(name), (int, float)) or isinstance(claims.get(name), bool):
                raise UpstreamError("id_token", f"the ID token has no {name}", "")
        if claims["exp"] <= now - SKEW:
            raise UpstreamError("clock_skew", "the ID token has expired",
                                "Check the clocks of idhub and of the IdP (NTP).")
        if claims["iat"] > now + SKEW or claims["iat"] < now - MAX_IAT_AGE - SKEW:
            raise UpstreamError("clock_skew", "the ID token's issue time is out of range",
                                "Check the clocks of idhub and of the IdP (NTP).")
        nbf = claims.get("nbf")
        if isinstance(nbf, (int, float)) and nbf > now + SKEW:
            raise UpstreamError("clock_skew", "the ID token is not valid yet", "Check the clocks (NTP).")
        if not isinstance(claims.get("nonce"), str) or not _eq(claims["nonce"], nonce):
            raise UpstreamError("nonce", "the ID token's nonce does not belong to this sign-in", "")
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise UpstreamError("subject", "the ID token has no subject", "")
        return claims

    def _check_tenant(self, conn: dict, doc: dict, claims: dict, tid: str | None) -> None:
        allowed = conn.get("allowed_tenants") or []
        if multi_tenant(conn):
            if not tid:
                raise UpstreamError("tenant", "the ID token has no tenant id (tid)", "")
            if tid not in allowed:
                raise UpstreamError("tenant", f"tenant {tid[:64]!r} is not allowed to sign in here",
                                    "Add the tenant id to allowed_tenants if this organisation may sign in.")
        elif allowed and tid not in allowed:
            raise UpstreamError("tenant", f"tenant {str(tid)[:64]!r} is not allowed to sign in here",
                                "Add the tenant id to allowed_tenants.")
        if conn.get("preset") == "azure_ad" and not multi_tenant(conn) and (
                not tid or f"/{tid}/" not in doc["issuer"].rstrip("/") + "/"):
            raise UpstreamError("tenant", "the ID token's tenant does not match the issuer's tenant", "")

    # ---- identity -------------------------------------------------------------------------------------------------
    def identity(self, conn: dict, claims: dict, access_token: str | None) -> UpstreamIdentity:
        preset = conn.get("preset", "generic")
        mapped = map_claims(preset, claims, conn.get("attribute_map") or None)
        warnings: list[str] = []
        groups = list(mapped["groups"])
        if mapped.get("overage"):
            endpoint = conn.get("groups_endpoint")
            if endpoint and access_token:
                try:
                    groups = self._resolve_groups(endpoint, access_token, conn)
                    warnings.append(f"groups overage: {len(groups)} group(s) read from the groups endpoint")
                except _GroupsIncomplete as exc:
                    groups = []
                    warnings.append(f"groups overage: {exc}, so group memberships were not updated")
            else:
                warnings.append("groups overage: the IdP left the groups out of the token (too many) and no "
                                "groups_endpoint is configured, so group memberships were not updated")
        if preset == "okta" and isinstance(claims.get("groups"), list) and len(claims["groups"]) >= 100:
            warnings.append("Okta sends at most 100 groups in a token; memberships may be truncated "
                            "(use a groups claim filter)")
        amr = tuple(mapped.get("amr") or ())
        return UpstreamIdentity(
            subject=mapped["subject"], email=mapped["email"], name=mapped["name"],
            given_name=mapped["given_name"], family_name=mapped["family_name"], groups=tuple(groups),
            amr=amr, mfa=bool(mapped.get("mfa")), claims=claims, warnings=tuple(warnings),
        )

    def _resolve_groups(self, endpoint: str, access_token: str, conn: dict | None = None) -> list[str]:
        """A Graph-like ``memberOf`` answer: ``{"value": [{"id": …}], "@odata.nextLink": …}``."""
        out: list[str] = []
        url = endpoint
        if _origin(endpoint)[0] != "https" and not (_origin(endpoint)[0] == "http" and _loopback_url(endpoint)):
            raise _GroupsIncomplete("the groups endpoint is not an https URL; it was not called")
        for _ in range(20):  # pages
            data = self._get_json(url, "groups", headers={"Authorization": f"Bearer {access_token}"}, conn=conn,
                                  field="groups_endpoint")
            for item in data.get("value", []) if isinstance(data.get("value"), list) else []:
                gid = item.get("id") if isinstance(item, dict) else None
                if isinstance(gid, str) and gid and gid not in out:
                    out.append(gid[:1024])
            nxt = data.get("@odata.nextLink")
            if nxt is None:
                return out[:1000]
            if not isinstance(nxt, str) or _origin(nxt) != _origin(endpoint):
                # the access token goes to the groups endpoint's own scheme, host and port only
                raise _GroupsIncomplete("the groups endpoint's next page is on another host; it was not followed")
            url = nxt
        raise _GroupsIncomplete("the groups endpoint has more than 20 pages")


def _kty_for(alg: str) -> str:
    return "EC" if alg.startswith("ES") else "RSA"


class _GroupsIncomplete(Exception):
    """The groups endpoint could not be read completely: memberships are left as they are."""


def _origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) with the scheme's default port filled in; a malformed URL has no origin."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        scheme, host, port = parts.scheme.lower(), (parts.hostname or "").lower(), parts.port
    except ValueError:
        return ("", "", None)
    if parts.username is not None or parts.password is not None:
        return ("", "", None)
    if port is None:
        port = {"https": 443, "http": 80}.get(scheme)
    return (scheme, host, port) if scheme and host else ("", "", None)


def app_jwks_uri(jwks_uri: str, client_id: str) -> str:
    from urllib.parse import quote

    return jwks_uri + ("&" if "?" in jwks_uri else "?") + "appid=" + quote(client_id, safe="")


def _loopback_url(url: str) -> bool:
    from urllib.parse import urlsplit

    try:
        return (urlsplit(url).hostname or "") in ("127.0.0.1", "localhost", "::1")
    except ValueError:
        return False


def _check_discovery(doc: dict) -> None:
    """The discovery document's values have the types idhub relies on (a hostile or broken IdP fails here, with
    a named check, rather than deep in a library); endpoints are https, or http on this machine only."""
    for field in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
        value = doc.get(field)
        if not isinstance(value, str) or not value or len(value) > 2048:
            raise UpstreamError("discovery", f"the discovery document has no usable {field}",
                                "Check the issuer URL: its /.well-known/openid-configuration must name it.")
        if not (value.startswith("https://") or (value.startswith("http://") and _loopback_url(value))):
            raise UpstreamError("discovery", f"the discovery document's {field} is not an https URL",
                                "idhub talks to identity providers over https only.")
        if _origin(value) == ("", "", None):
            raise UpstreamError("discovery", f"the discovery document's {field} is not a valid URL", "")
    for field in ("id_token_signing_alg_values_supported", "token_endpoint_auth_methods_supported",
                  "scopes_supported", "response_types_supported"):
        value = doc.get(field)
        if value is not None and (not isinstance(value, list) or len(value) > 100
                                  or not all(isinstance(v, str) for v in value)):
            raise UpstreamError("discovery", f"the discovery document's {field} is not a list of strings", "")
    flag = doc.get("authorization_response_iss_parameter_supported")
    if flag is not None and not isinstance(flag, bool):
        raise UpstreamError("discovery", "the discovery document's authorization_response_iss_parameter_supported "
                            "is not a boolean", "")
