"""Connections from the config file: per-protocol validation (called from ``idp.configfile``), resolution of
``metadata_file``/``metadata_url`` into ``metadata_xml``, and ``idhub apply`` into the ``federation_*`` tables
(secrets encrypted at rest). Plain Python."""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from federation.models import FederationConnection
from idp.invalidation import CONNECTIONS, drop

PROTOCOLS = ("saml", "oidc", "ldap")
PRESETS = ("okta", "azure_ad", "generic")
SECRET_KEYS = ("client_secret", "bind_password")
MAPPED_FIELDS = ("subject", "email", "name", "given_name", "family_name", "groups")
TENANT_TEMPLATE = "{tenantid}"
MAX_METADATA = 1024 * 1024
SECRET_PURPOSE = "federation-secrets"
REGISTERED_VIA = "registered_via"  # a settings key: "api" when the admin API or console registered the connection
# a settings key: "api" once a workspace admin changed what a connection vouches for (its domains, whether its
# e-mail addresses count as verified, its SAML certificates or metadata, its tenants): ``admin_chosen_trust``
TRUST_SET_VIA = "trust_set_via"
TRUST_KEYS = ("domains", "email_verified_by_idp", "certs", "metadata_xml", "metadata_url", "allowed_tenants",
              "issuer")
DOMAIN_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
SLUG_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
GUIDISH_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

COMMON_KEYS = {"slug", "name", "protocol", "preset", "domains", "trust_mfa", "jit", "sso_required",
               "attribute_map", "attribute_mapping", "link_by_email", "email_verified_by_idp"}
PROTOCOL_KEYS = {
    "oidc": {"issuer", "client_id", "client_secret", "allowed_tenants", "scopes", "groups_endpoint"},
    "saml": {"metadata_xml", "metadata_file", "metadata_url", "certs", "allow_unsolicited", "allowed_tenants",
             "clock_skew", "require_signed_assertion"},
    "ldap": {"url", "bind_dn", "bind_password", "user_search_base", "user_filter", "group_search_base",
             "start_tls", "ca_file", "timeout"},
}
# Keys the contract lists for every connection; they are refused when they do not belong to the protocol.
ALL_KEYS = COMMON_KEYS | set().union(*PROTOCOL_KEYS.values())


def https_or_loopback(url: str) -> bool:
    """An https URL, or http to this machine (tests, a local metadata mirror): never plain http across a network."""
    from urllib.parse import urlsplit

    scheme = urlsplit(url).scheme.lower()
    return scheme == "https" or (scheme == "http" and _loopback(url))


def guarded(conn: dict) -> bool:
    """Whether a connection was registered (or its URLs last changed) over the admin API or console: its fetches
    (SAML metadata_url and its refresh, OIDC discovery, keys, token and groups endpoints) and its LDAP server go
    through ``idp.netfetch``'s SSRF checks. Config-file connections (the trusted operator) do not."""
    return (conn or {}).get(REGISTERED_VIA) == "api"


def admin_chosen_trust(conn: dict) -> bool:
    """Whether a workspace admin chose what this connection vouches for: registered over the API or console, or
    its domains, certificates, metadata, issuer or ``email_verified_by_idp`` changed there since the operator's
    config file last set them. Such a connection signs people in as before, but idhub does not pass its word on
    (``email_verified`` is not recorded from it: ``federation.service``)."""
    return guarded(conn) or (conn or {}).get(TRUST_SET_VIA) == "api"


def check_ldap_url(url, field: str = "url") -> None:
    """An LDAP ``url`` given over the admin API or console: a host that is an IP literal or ``localhost`` the
    outbound checks refuse is an ``idp.netfetch.FetchError`` naming ``field`` now, without any DNS look-up (host
    names are checked at every connection, ``federation.ldap``). A URL that is not ``ldap(s)://host`` is left to
    the validator."""
    from urllib.parse import urlsplit

    from idp import netfetch

    if not isinstance(url, str):
        return
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
    except ValueError:
        return
    if parts.scheme.lower() in ("ldap", "ldaps") and host:
        netfetch.check_host(host, field)


def fetch_metadata(url: str, timeout: float = 10, *, guarded: bool = False) -> str:
    """GET SAML metadata (bounded size). Raises ``ValueError`` with a short reason, whatever went wrong: requests'
    own errors, but also urllib3's read/protocol errors from the streamed body (a peer that closes early or stalls
    after the headers), decoding errors and socket errors. ``guarded``: through ``idp.netfetch`` (an
    ``idp.netfetch.FetchError`` naming ``metadata_url`` and what was wrong)."""
    import requests

    if not https_or_loopback(url):
        raise ValueError("metadata_url must use https (http only on 127.0.0.1/localhost)")
    if guarded:
        from idp import netfetch

        body = netfetch.fetch(url, field="metadata_url", timeout=timeout, limit=MAX_METADATA,
                              accept="application/samlmetadata+xml, application/xml")
        return body.decode("utf-8", errors="replace")
    try:
        with requests.get(url, timeout=timeout, stream=True, allow_redirects=False) as resp:
            if resp.status_code != 200:
                raise ValueError(f"HTTP {resp.status_code}")
            body = resp.raw.read(MAX_METADATA + 1, decode_content=True)
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - urllib3 ReadTimeoutError/ProtocolError, OSError, …: fail closed
        raise ValueError(type(exc).__name__) from None
    if not isinstance(body, bytes):
        raise ValueError("no body")
    if len(body) > MAX_METADATA:
        raise ValueError("larger than 1 MiB")
    return body.decode("utf-8", errors="replace")


def validate_connection(v, c: dict, p: str, base_dir: Path | None = None, fetch=fetch_metadata) -> dict:
    """Validate one connection (the shape and common keys were checked by ``idp.configfile``); return the
    normalised settings dict every protocol module receives as ``conn``."""
    proto = c.get("protocol")
    out: dict = {"slug": c.get("slug"), "name": c.get("name"), "protocol": proto,
                 "preset": c.get("preset", "generic")}
    slug = c.get("slug")
    if isinstance(slug, str) and not SLUG_RE.match(slug):
        v.err(f"{p}.slug", "must match [a-z0-9-]+ (1-63 characters, no leading or trailing '-')")
    if c.get("name") is not None:
        v.string(c["name"], f"{p}.name")
    if proto not in PROTOCOLS:
        return out
    for k in c:
        if k in ALL_KEYS and k not in COMMON_KEYS and k not in PROTOCOL_KEYS[proto]:
            v.err(f"{p}.{k}", f"not used by {proto} connections")
    domains = []
    for j, d in enumerate(v.seq(c.get("domains"), f"{p}.domains")):
        d = v.string(d, f"{p}.domains[{j}]", 253)
        if d is not None and not DOMAIN_RE.match(d.lower()):
            v.err(f"{p}.domains[{j}]", "not a domain name")
        elif d is not None:
            domains.append(d.lower())
    out["domains"] = list(dict.fromkeys(domains))
    for key, default in (("trust_mfa", False), ("jit", True), ("sso_required", False), ("link_by_email", False),
                         ("email_verified_by_idp", False)):
        val = c.get(key, default)
        out[key] = bool(v.boolean(val, f"{p}.{key}")) if key in c else default
    if out["sso_required"] and not out["domains"]:
        v.err(f"{p}.sso_required", "needs domains (SSO is required for the addresses of these domains)")
    amap_key = "attribute_map" if "attribute_map" in c else "attribute_mapping"
    amap = c.get(amap_key) or {}
    out["attribute_map"] = {}
    if not isinstance(amap, dict):
        v.err(f"{p}.{amap_key}", "must be a mapping of attribute name to field")
    else:
        for name, field in amap.items():
            if not isinstance(name, str) or not name or len(name) > 512:
                v.err(f"{p}.{amap_key}", "attribute names must be non-empty strings")
            elif field not in MAPPED_FIELDS:
                v.err(f"{p}.{amap_key}.{name}", f"must be one of {', '.join(MAPPED_FIELDS)}")
            else:
                out["attribute_map"][name] = field
    if proto == "oidc":
        _oidc(v, c, p, out)
    elif proto == "saml":
        _saml(v, c, p, out, base_dir, fetch)
    else:
        _ldap(v, c, p, out, base_dir)
    return out


def _required(v, c: dict, p: str, *keys: str) -> None:
    for k in keys:
        if c.get(k) in (None, ""):
            v.err(f"{p}.{k}", "required")


def _oidc(v, c: dict, p: str, out: dict) -> None:
    _required(v, c, p, "issuer", "client_id")
    issuer = c.get("issuer")
    if isinstance(issuer, str):
        checked = v.url(issuer.replace(TENANT_TEMPLATE, "tenant"), f"{p}.issuer")
        if checked is not None:
            out["issuer"] = issuer.rstrip("/") if issuer.endswith("/") and issuer.count("/") > 3 else issuer
            if issuer.startswith("http://") and not _loopback(issuer):
                v.err(f"{p}.issuer", "must use https (http only on 127.0.0.1/localhost)")
    if c.get("client_id") is not None:
        out["client_id"] = v.string(c["client_id"], f"{p}.client_id", 255)
    if c.get("client_secret") is not None:
        out["client_secret"] = v.string(c["client_secret"], f"{p}.client_secret", 1024)
    tenants = _tenants(v, c, p, out)
    if isinstance(issuer, str) and (TENANT_TEMPLATE in issuer or _multi_tenant_alias(issuer)) and not tenants:
        v.err(f"{p}.allowed_tenants", "required for a multi-tenant issuer: list the tenant ids allowed to sign in")
    scopes = [s for s in (v.string(s, f"{p}.scopes[{j}]", 100) for j, s in
                          enumerate(v.seq(c.get("scopes"), f"{p}.scopes"))) if s]
    out["scopes"] = scopes or ["openid", "email", "profile"] + (["groups"] if c.get("preset") == "okta" else [])
    if "openid" not in out["scopes"]:
        v.err(f"{p}.scopes", "must include openid")
    if c.get("groups_endpoint") is not None:
        endpoint = v.url(c["groups_endpoint"], f"{p}.groups_endpoint", schemes=("https", "http"))
        if endpoint is not None and not https_or_loopback(endpoint):
            v.err(f"{p}.groups_endpoint", "must use https (http only on 127.0.0.1/localhost)")
        elif endpoint is not None:
            out["groups_endpoint"] = endpoint


def _tenants(v, c: dict, p: str, out: dict) -> list[str]:
    tenants = []
    for j, t in enumerate(v.seq(c.get("allowed_tenants"), f"{p}.allowed_tenants")):
        t = v.string(t, f"{p}.allowed_tenants[{j}]", 64)
        if t is not None and not GUIDISH_RE.match(t):
            v.err(f"{p}.allowed_tenants[{j}]", "not a tenant id")
        elif t is not None:
            tenants.append(t)
    out["allowed_tenants"] = tenants
    if "allowed_tenants" in c and c.get("preset") != "azure_ad":
        v.err(f"{p}.allowed_tenants", "only for the azure_ad preset")
    return tenants


def _int(v, value, path: str, low: int, high: int) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        v.err(path, f"must be a whole number from {low} to {high}")
        return None
    return value


def _multi_tenant_alias(issuer: str) -> bool:
    return any(f"/{alias}/" in issuer for alias in ("common", "organizations"))


def _loopback(url: str) -> bool:
    from urllib.parse import urlsplit

    return urlsplit(url).hostname in ("127.0.0.1", "localhost", "::1")


def _saml(v, c: dict, p: str, out: dict, base_dir: Path | None, fetch) -> None:
    given = [k for k in ("metadata_xml", "metadata_file", "metadata_url") if c.get(k)]
    if len(given) != 1:
        v.err(p, "give exactly one of metadata_xml, metadata_file or metadata_url")
        return
    xml = None
    if c.get("metadata_xml"):
        xml = _multiline(v, c["metadata_xml"], f"{p}.metadata_xml", MAX_METADATA)
    elif c.get("metadata_file"):
        name = v.string(c["metadata_file"], f"{p}.metadata_file", 1024)
        if name is not None:
            path = Path(name) if Path(name).is_absolute() or base_dir is None else Path(base_dir) / name
            try:
                data = path.read_bytes()[: MAX_METADATA + 1]
            except OSError as exc:
                v.err(f"{p}.metadata_file", f"cannot read {name} ({exc.strerror})")
                data = None
            if data is not None and len(data) > MAX_METADATA:
                v.err(f"{p}.metadata_file", "larger than 1 MiB")
            elif data is not None:
                xml = data.decode("utf-8", errors="replace")
    else:
        url = v.url(c["metadata_url"], f"{p}.metadata_url")
        if url is not None and not https_or_loopback(url):
            v.err(f"{p}.metadata_url", "must use https (http only on 127.0.0.1/localhost)")
        elif url is not None:
            out["metadata_url"] = url
            try:
                xml = fetch(url)
            except ValueError as exc:  # idp.netfetch's FetchError says what was wrong on its own
                v.err(f"{p}.metadata_url", getattr(exc, "reason", None) or f"could not be fetched ({exc})")
    certs = []
    for j, pem in enumerate(v.seq(c.get("certs"), f"{p}.certs")):
        pem = _multiline(v, pem, f"{p}.certs[{j}]", 16384)
        if pem is not None and "BEGIN CERTIFICATE" not in pem:
            v.err(f"{p}.certs[{j}]", "must be a PEM certificate")
        elif pem is not None:
            certs.append(pem)
    out["certs"] = certs
    _tenants(v, c, p, out)
    if "clock_skew" in c:
        out["clock_skew"] = _int(v, c["clock_skew"], f"{p}.clock_skew", 0, 300)
    if "require_signed_assertion" in c:
        out["require_signed_assertion"] = bool(v.boolean(c["require_signed_assertion"],
                                                         f"{p}.require_signed_assertion"))
    if "allow_unsolicited" in c:
        out["allow_unsolicited"] = bool(v.boolean(c["allow_unsolicited"], f"{p}.allow_unsolicited"))
    else:
        out["allow_unsolicited"] = False
    if xml is None:
        return
    out["metadata_xml"] = xml
    try:
        from federation import saml_sp
    except ImportError:  # the SAML module is built in parallel; without it SAML metadata is checked at sign-in
        return
    try:
        meta = saml_sp.parse_idp_metadata(xml)
    except Exception as exc:  # the module raises UpstreamError/ValueError; any failure is a config error
        v.err(f"{p}.{given[0]}", f"not usable IdP metadata ({getattr(exc, 'message', None) or exc})"[:300])
        return
    if not meta.get("certs") and not certs:
        v.err(f"{p}.{given[0]}", "the metadata has no signing certificate (add one under certs)")


def _multiline(v, value, path: str, limit: int) -> str | None:
    """A document (XML, PEM): line breaks and tabs allowed, other control characters not."""
    if not isinstance(value, str):
        v.err(path, "must be a string")
        return None
    if len(value) > limit:
        v.err(path, f"longer than {limit} characters")
        return None
    if any(ord(ch) < 0x20 and ch not in "\t\r\n" for ch in value):
        v.err(path, "contains control characters")
        return None
    return value


def _ldap(v, c: dict, p: str, out: dict, base_dir: Path | None) -> None:
    _required(v, c, p, "url", "bind_dn", "bind_password", "user_search_base")
    for key, limit in (("url", 2048), ("bind_dn", 1024), ("bind_password", 1024), ("user_search_base", 1024),
                       ("group_search_base", 1024), ("user_filter", 1024)):
        if c.get(key) is not None:
            out[key] = v.string(c[key], f"{p}.{key}", limit)
    if c.get("url") is not None:
        v.url(c["url"], f"{p}.url", schemes=("ldap", "ldaps"))
    flt = out.get("user_filter")
    if flt is not None and ("{username}" not in flt or not (flt.startswith("(") and flt.endswith(")"))):
        v.err(f"{p}.user_filter", "must be an LDAP filter in parentheses containing {username}")
    if not flt:
        out.pop("user_filter", None)  # federation.ldap's default: uid or mail
    out["start_tls"] = bool(v.boolean(c["start_tls"], f"{p}.start_tls")) if "start_tls" in c else False
    if "timeout" in c:
        out["timeout"] = _int(v, c["timeout"], f"{p}.timeout", 1, 60)
    if c.get("ca_file") is not None:
        name = v.string(c["ca_file"], f"{p}.ca_file", 1024)
        if name is not None:
            path = Path(name) if Path(name).is_absolute() or base_dir is None else Path(base_dir) / name
            if not path.is_file():
                v.err(f"{p}.ca_file", f"cannot read {name}")
            out["ca_file"] = str(path)


def check_domains(v, connections: list[dict], p: str) -> None:
    """A domain routes to one connection only."""
    seen: dict[str, str] = {}
    for i, c in enumerate(connections):
        for d in c.get("domains") or []:
            if d in seen and seen[d] != c.get("slug"):
                v.err(f"{p}[{i}].domains", f"{d} already belongs to connection {seen[d]!r}")
            seen.setdefault(d, c.get("slug"))


# ---- apply ------------------------------------------------------------------------------------------------------
def secret_box(secret_key: str | list[str]):
    from idp.mfa.crypto import SecretBox

    return SecretBox(secret_key, SECRET_PURPOSE)


def apply_connections(db: Session, ws, connections: list[dict], secret_key: str) -> list[str]:
    """Upsert the workspace's connections (idempotent) and delete the ones no longer declared (their identity
    links go with them). Returns a line per created connection."""
    box = secret_box(secret_key) if any(c.get(k) for c in connections for k in SECRET_KEYS) else None
    drop(CONNECTIONS)  # this process at once; the caller publishes to the others after its commit
    created = []
    have = {c.slug: c for c in db.scalars(select(FederationConnection)
                                          .where(FederationConnection.workspace_id == ws.id))}
    wanted = set()
    for c in connections:
        wanted.add(c["slug"])
        row = have.get(c["slug"])
        if row is None:
            row = FederationConnection(workspace_id=ws.id, slug=c["slug"])
            db.add(row)
            created.append(f"connection {ws.slug}/{c['slug']}")
        settings = {k: val for k, val in c.items() if k not in SECRET_KEYS}
        sealed = {}
        for k in SECRET_KEYS:
            if c.get(k):
                old = (row.secrets or {}).get(k)
                try:  # keep the old ciphertext when unchanged, so re-applying changes nothing
                    same = old is not None and box.decrypt(old) == c[k]
                except ValueError:
                    same = False
                sealed[k] = old if same else box.encrypt(c[k])
        if row.name != c["name"]:
            row.name = c["name"]
        row.protocol, row.preset = c["protocol"], c.get("preset", "generic")
        if row.domains != c.get("domains", []):
            row.domains = list(c.get("domains", []))
        if row.settings != settings:
            row.settings = settings
        if row.secrets != sealed:
            row.secrets = sealed
    gone = [row.id for slug, row in have.items() if slug not in wanted]
    if gone:
        db.execute(delete(FederationConnection).where(FederationConnection.id.in_(gone)))
    db.flush()
    return created


def connection_settings(row: FederationConnection, secret_key: str) -> dict:
    """The ``conn`` dict a protocol module receives: settings plus decrypted secrets."""
    box = secret_box(secret_key)
    conn = dict(row.settings or {})
    conn.update(slug=row.slug, name=row.name, protocol=row.protocol, preset=row.preset,
                domains=list(row.domains or []), id=row.id)
    for k, token in (row.secrets or {}).items():
        conn[k] = box.decrypt(token)
    return conn
