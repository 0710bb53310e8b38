"""Downstream SAML service providers from the config file's ``apps`` entries (``protocol: saml``)."""

from __future__ import annotations

import ipaddress
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from sqlalchemy import select

from idp.invalidation import SAML_APPS, drop
from idp.models import utcnow
from saml.models import SamlServiceProvider
from saml.xml import (
    BINDING_POST,
    BINDING_REDIRECT,
    BINDING_SOAP,
    MAX_METADATA,
    NS,
    XmlError,
    cert_pem,
    parse,
    pem_body,
    text_of,
)

NAMEID_EMAIL = "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress"
NAMEID_PERSISTENT = "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"
NAMEID_TRANSIENT = "urn:oasis:names:tc:SAML:2.0:nameid-format:transient"
NAMEID_UNSPECIFIED = "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified"
NAMEID_FORMATS = (NAMEID_EMAIL, NAMEID_PERSISTENT, NAMEID_TRANSIENT, NAMEID_UNSPECIFIED)
USER_FIELDS = ("email", "name", "groups", "id", "given_name", "family_name", "display_name")
SLO_BINDINGS = {"redirect": BINDING_REDIRECT, "post": BINDING_POST}
DEFAULT_ATTRIBUTES = {"email": "email", "name": "name", "groups": "groups"}
# Characters that could break out of a CSP source expression or an HTML attribute are refused in ACS URLs.
_URL_BAD = re.compile(r"[\s;,'\"<>\\]")




class SamlConfigError(ValueError):
    pass


def check_url(url, what: str) -> str:
    if not isinstance(url, str) or len(url) > 2048 or _URL_BAD.search(url) or any(ord(c) < 0x20 for c in url):
        raise SamlConfigError(f"{what}: not a usable URL")
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.username or parts.password:
        raise SamlConfigError(f"{what}: must be an http(s) URL without credentials")
    return url


def check_cert(pem_or_b64: str, what: str) -> str:
    pem = cert_pem(pem_body(pem_or_b64))
    try:
        x509.load_pem_x509_certificate(pem.encode())
    except ValueError:
        raise SamlConfigError(f"{what}: not an X.509 certificate") from None
    return pem


def parse_sp_metadata(xml: bytes | str) -> dict:
    """entityID, HTTP-POST ACS endpoints, signing certificate, WantAssertionsSigned and AuthnRequestsSigned of
    an SP's metadata (hardened parse)."""
    data = xml.encode() if isinstance(xml, str) else xml
    try:
        root = parse(data, MAX_METADATA)
    except XmlError as exc:
        raise SamlConfigError(f"metadata: {exc}") from None
    if root.tag == f"{{{NS['md']}}}EntitiesDescriptor":
        found = root.findall("md:EntityDescriptor", NS)
        if len(found) != 1:
            raise SamlConfigError("metadata: expected exactly one EntityDescriptor")
        root = found[0]
    if root.tag != f"{{{NS['md']}}}EntityDescriptor":
        raise SamlConfigError("metadata: not an EntityDescriptor")
    entity_id = root.get("entityID") or ""
    sps = root.findall("md:SPSSODescriptor", NS)
    if not entity_id or len(sps) != 1:
        raise SamlConfigError("metadata: needs an entityID and one SPSSODescriptor")
    sp = sps[0]
    acs = []
    for i, el in enumerate(sp.findall("md:AssertionConsumerService", NS)):
        if el.get("Binding") != BINDING_POST:
            continue  # responses are only sent with HTTP-POST
        index = el.get("index")
        acs.append({"url": check_url(el.get("Location"), "AssertionConsumerService"),
                    "index": int(index) if index and index.isdigit() else i,
                    "default": el.get("isDefault") == "true"})
    if not acs:
        raise SamlConfigError("metadata: no HTTP-POST AssertionConsumerService")
    cert = enc_cert = None
    for kd in sp.findall("md:KeyDescriptor", NS):
        el = kd.find("ds:KeyInfo/ds:X509Data/ds:X509Certificate", NS)
        if el is None:
            continue
        if kd.get("use") in (None, "signing") and cert is None:
            cert = check_cert(text_of(el), "metadata certificate")
        if kd.get("use") in (None, "encryption") and enc_cert is None:
            enc_cert = check_cert(text_of(el), "metadata encryption certificate")
    slo = slo_binding = None
    for wanted in (BINDING_REDIRECT, BINDING_POST):  # our logout messages use HTTP-Redirect, else HTTP-POST
        for el in sp.findall("md:SingleLogoutService", NS):
            if el.get("Binding") == wanted:
                slo, slo_binding = check_url(el.get("Location"), "SingleLogoutService"), wanted
                break
        if slo:
            break
    soap = None
    for el in sp.findall("md:SingleLogoutService", NS):
        if el.get("Binding") == BINDING_SOAP:  # back-channel logout of sessions ended without their browser
            soap = check_url(el.get("Location"), "SingleLogoutService")
            break
    formats = [text_of(el) for el in sp.findall("md:NameIDFormat", NS)]
    return {"entity_id": entity_id, "acs": acs, "certificate": cert, "slo_url": slo, "slo_binding": slo_binding,
            "slo_soap_url": soap, "encryption_certificate": enc_cert,
            "want_assertions_signed": sp.get("WantAssertionsSigned") == "true",
            "authn_requests_signed": sp.get("AuthnRequestsSigned") == "true",
            "nameid_formats": [f for f in formats if f in NAMEID_FORMATS]}


def _sp_settings(app: dict, base_dir: Path | None, fresh: bool = False) -> dict:
    meta = app.get("metadata_xml")
    if not meta and app.get("metadata_file"):
        # A relative path is relative to the directory of the config file that names it (not to the working
        # directory of `idhub apply`).
        path = Path(app["metadata_file"])
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        try:
            if path.stat().st_size > MAX_METADATA:
                raise SamlConfigError(f"metadata_file: {path} is too large")
            meta = path.read_bytes()
        except OSError as exc:
            raise SamlConfigError(f"metadata_file: cannot read {path} ({exc.strerror or type(exc).__name__})") \
                from None
    if not meta and app.get("metadata_url"):
        # registered over the admin API or console: fetched by idp.netfetch's SSRF checks, at every refresh too
        meta = fetch_metadata(app["metadata_url"], reuse_for=0.0 if fresh else 60.0,
                              guarded=app.get(REGISTERED_VIA) == "api")
    if meta:
        out = parse_sp_metadata(meta)
    else:
        if not app.get("entity_id") or not app.get("acs_url"):
            raise SamlConfigError("needs metadata_xml or metadata_file, or entity_id with acs_url")
        urls = app["acs_url"] if isinstance(app["acs_url"], list) else [app["acs_url"]]
        out = {"entity_id": str(app["entity_id"]),
               "acs": [{"url": check_url(u, "acs_url"), "index": i, "default": i == 0} for i, u in enumerate(urls)],
               "certificate": check_cert(app["certificate"], "certificate") if app.get("certificate") else None,
               "slo_url": check_url(app["slo_url"], "slo_url") if app.get("slo_url") else None,
               "slo_binding": BINDING_REDIRECT if app.get("slo_url") else None, "slo_soap_url": None,
               "encryption_certificate": None,
               "want_assertions_signed": True, "authn_requests_signed": False, "nameid_formats": []}
    if app.get("slo_binding") is not None:
        if app["slo_binding"] not in SLO_BINDINGS:
            raise SamlConfigError("slo_binding must be redirect or post")
        if out["slo_url"]:
            out["slo_binding"] = SLO_BINDINGS[app["slo_binding"]]
    if app.get("encryption_certificate"):
        out["encryption_certificate"] = check_cert(app["encryption_certificate"], "encryption_certificate")
    elif out["encryption_certificate"] is None and not meta and out["certificate"]:
        out["encryption_certificate"] = out["certificate"]
    if app.get("encrypt_assertions") and not out["encryption_certificate"]:
        raise SamlConfigError("encrypt_assertions needs the SP's encryption certificate")
    if len(out["entity_id"]) > 1024:
        raise SamlConfigError("entityID too long")
    return out


def apply_saml_apps(db, workspace, apps: list[dict], base_dir: Path | None = None) -> None:
    """Upsert the workspace's SAML service providers by entity ID. Apps removed from the file are left alone.

    ``apps`` are validated entries (``idp.configfile._apps``); OIDC apps in the list are skipped. A bad entry
    raises ``SamlConfigError`` (a ``ValueError``) naming the app. A ``metadata_url`` is fetched now (see
    ``fetch_metadata``) and again by ``refresh_metadata``."""
    for position, app in enumerate(apps):
        if app.get("protocol") != "saml":
            continue
        try:
            s = _sp_settings(app, base_dir)
            fmt = app.get("nameid_format") or (s["nameid_formats"] or [NAMEID_EMAIL])[0]
            if fmt not in NAMEID_FORMATS:
                raise SamlConfigError(f"nameid_format must be one of {', '.join(NAMEID_FORMATS)}")
            attrs = app.get("attributes")
            attrs = DEFAULT_ATTRIBUTES if attrs is None else attrs
            if not isinstance(attrs, dict) or any(
                    not isinstance(k, str) or not k or len(k) > 256 or v not in USER_FIELDS for k, v in attrs.items()):
                raise SamlConfigError(f"attributes: a mapping of SAML attribute names to {', '.join(USER_FIELDS)}")
            require_signed = bool(app.get("require_signed_requests", s["authn_requests_signed"]))
            if require_signed and not s["certificate"]:
                raise SamlConfigError("signed requests are required but the SP has no certificate")
        except (SamlConfigError, OSError) as exc:
            raise SamlConfigError(f"SAML app {app.get('slug')!r}: {exc}") from None
        row = db.scalar(select(SamlServiceProvider).where(SamlServiceProvider.workspace_id == workspace.id,
                                                          SamlServiceProvider.entity_id == s["entity_id"]))
        if row is None:
            row = SamlServiceProvider(workspace_id=workspace.id, entity_id=s["entity_id"])
            db.add(row)
        row.slug = app.get("slug") or ""
        row.name = app.get("name") or ""
        row.acs = s["acs"]
        row.slo_url = s["slo_url"]
        row.slo_binding = s["slo_binding"]
        row.slo_soap_url = s["slo_soap_url"]
        row.encryption_certificate = s["encryption_certificate"]
        row.encrypt_assertions = bool(app.get("encrypt_assertions"))
        row.certificate = s["certificate"]
        row.nameid_format = fmt
        row.attributes = dict(attrs)
        row.sign_response = bool(app.get("sign_response", False))
        row.sign_assertion = bool(app.get("sign_assertion", True)) or not row.sign_response
        row.require_signed_requests = require_signed
        row.require_mfa = bool(app.get("require_mfa"))
        row.require_phishing_resistant_mfa = bool(app.get("require_phishing_resistant_mfa"))
        row.idp_initiated = bool(app.get("idp_initiated"))
        row.assigned_groups = list(app["assigned_groups"]) if app.get("assigned_groups") is not None else None
        row.show_in_launcher = app.get("show_in_launcher") is not False
        row.description = app.get("description") or None
        if app.get(REGISTERED_VIA) != "api":  # the config file's order is the launcher's; API apps come after
            row.launcher_position = position
        from_url = bool(app.get("metadata_url")) and not (app.get("metadata_xml") or app.get("metadata_file"))
        row.metadata_url = app["metadata_url"] if from_url else None
        row.metadata_fetched_at = utcnow() if from_url else None
        # registered over the admin API or console without a URL (pasted metadata, or entity_id with acs_url): only
        # the marker, so that its SOAP SingleLogoutService is called through idp.netfetch too (saml.slo)
        api = app.get(REGISTERED_VIA) == "api"
        row.app_settings = dict(app) if from_url else ({REGISTERED_VIA: "api"} if api else None)
    db.flush()
    drop(SAML_APPS)  # this process at once; the caller publishes to the others after its commit


# ---- metadata_url --------------------------------------------------------------------------------------
FETCH_TIMEOUT = 10.0  # seconds for the whole fetch
REFRESH_AFTER = 24 * 3600  # seconds
# (url, guarded) -> (monotonic time, body): validate + apply fetch once. A copy fetched for the config file is never
# handed to an API caller (who gets the SSRF checks).
_fetched: dict[tuple[str, bool], tuple[float, bytes]] = {}
# The key of an app entry (and of ``app_settings``) saying the admin API or console registered the app: its
# metadata_url (and refresh) and its SOAP SingleLogoutService (back-channel logout) go through idp.netfetch.
REGISTERED_VIA = "registered_via"


def guarded(row) -> bool:
    """Whether an SP row was registered over the admin API or console (``app_settings.registered_via: api``)."""
    settings = getattr(row, "app_settings", None)
    return isinstance(settings, dict) and settings.get(REGISTERED_VIA) == "api"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise SamlConfigError(f"metadata_url: redirected (HTTP {code}); give the final URL")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def fetch_metadata(url: str, *, timeout: float = FETCH_TIMEOUT, limit: int = MAX_METADATA,
                   reuse_for: float = 60.0, guarded: bool = False) -> bytes:
    """An SP's metadata from ``url``: https, or http to a loopback address only; no redirects; at most ``limit``
    bytes within ``timeout`` seconds in all. The body is then parsed by the hardened parser like any metadata.

    ``guarded`` (a URL from the admin API or console): fetched by ``idp.netfetch`` — refused when the host resolves
    to a loopback, private, link-local, … address outside ``IDHUB_OUTBOUND_ALLOW_CIDRS``, and connected to the
    address that was checked."""
    check_url(url, "metadata_url")
    parts = urlsplit(url)
    if parts.scheme != "https" and not (parts.scheme == "http" and _loopback(parts.hostname or "")):
        raise SamlConfigError("metadata_url: must be https (plain http only to a loopback address)")
    hit = _fetched.get((url, guarded))
    if hit is not None and time.monotonic() - hit[0] < reuse_for:
        return hit[1]
    if guarded:
        from idp import netfetch

        try:
            body = netfetch.fetch(url, field="metadata_url", timeout=timeout, limit=limit,
                                  accept="application/samlmetadata+xml, application/xml")
        except netfetch.FetchError as exc:
            raise SamlConfigError(str(exc)) from None
        _remember((url, guarded), body)
        return body
    deadline = time.monotonic() + timeout
    opener = urllib.request.build_opener(_NoRedirect)
    req = urllib.request.Request(url, headers={  # noqa: S310 (https or loopback http, checked above)
        "Accept": "application/samlmetadata+xml, application/xml", "User-Agent": "idhub-saml-metadata"})
    chunks, size = [], 0
    try:
        with opener.open(req, timeout=timeout) as resp:  # noqa: S310 (scheme checked above)
            if resp.status != 200:
                raise SamlConfigError(f"metadata_url: HTTP {resp.status}")
            declared = resp.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > limit:
                raise SamlConfigError("metadata_url: the metadata is too large")
            while True:
                if time.monotonic() > deadline:
                    raise SamlConfigError("metadata_url: took too long")
                chunk = resp.read(65536)
                if not chunk:
                    break
                size += len(chunk)
                if size > limit:
                    raise SamlConfigError("metadata_url: the metadata is too large")
                chunks.append(chunk)
    except SamlConfigError:
        raise
    except urllib.error.HTTPError as exc:
        raise SamlConfigError(f"metadata_url: HTTP {exc.code}") from None
    except (OSError, ValueError) as exc:  # connection refused, timeouts, TLS errors, bad status lines
        raise SamlConfigError(f"metadata_url: could not be fetched ({type(exc).__name__})") from None
    body = b"".join(chunks)
    _remember((url, guarded), body)
    return body


def _remember(key: tuple[str, bool], body: bytes) -> None:
    if len(_fetched) > 256:
        _fetched.clear()
    _fetched[key] = (time.monotonic(), body)


def refresh_metadata(db, workspace, *, max_age: float = REFRESH_AFTER, audit=None) -> list[str]:
    """Fetch again the metadata of the workspace's SPs registered by ``metadata_url`` whose copy is older than
    ``max_age`` seconds, re-apply their settings and commit. An SP whose fetch or metadata fails keeps its
    current settings (and is named, with ``audit``, in the audit log). The entity IDs refreshed."""
    now = utcnow()
    done, events = [], []
    rows = db.scalars(select(SamlServiceProvider).where(SamlServiceProvider.workspace_id == workspace.id,
                                                        SamlServiceProvider.metadata_url.is_not(None))).all()
    for row in rows:
        fetched = row.metadata_fetched_at
        if fetched is not None and (now - fetched).total_seconds() < max_age:
            continue
        app = dict(row.app_settings or {"slug": row.slug, "name": row.name, "protocol": "saml"})
        app["metadata_url"] = row.metadata_url
        app["assigned_groups"] = row.assigned_groups  # as it is now (the admin API may have changed it since)
        app["show_in_launcher"], app["description"] = row.show_in_launcher, row.description
        position = row.launcher_position
        try:
            entity = _sp_settings(app, None, fresh=True)["entity_id"]
            if entity != row.entity_id:
                raise SamlConfigError("metadata_url: the metadata now names another entityID")
            apply_saml_apps(db, workspace, [app])
            row.launcher_position = position  # its place in the config file, not in this one-app list
        except (SamlConfigError, OSError) as exc:
            events.append(("saml.metadata.refresh_failed", {"sp": row.entity_id, "error": str(exc)[:200]}))
            continue
        events.append(("saml.metadata.refreshed", {"sp": row.entity_id}))
        done.append(row.entity_id)
    db.commit()  # before the audit log's own transaction (SQLite has one writer)
    for type_, data in events if audit is not None else ():
        audit.record(type_, workspace_id=workspace.id, data=data)
    return done


def find_sp(db, workspace_id: str, entity_id: str | None) -> SamlServiceProvider | None:
    if not entity_id or not isinstance(entity_id, str) or len(entity_id) > 1024:
        return None
    return db.scalar(select(SamlServiceProvider).where(SamlServiceProvider.workspace_id == workspace_id,
                                                       SamlServiceProvider.entity_id == entity_id))


def app_policy_lookup(hub):
    """For ``hub.app_policy_lookups``: the per-app policy overrides of a SAML SP (by slug or entity ID)."""

    def lookup(ws, app: str):
        row = hub.saml.sp_for_app(ws.id, app)
        return None if row is None else sp_policies(row)

    return lookup


def sp_policies(sp) -> dict:
    """The per-app policy overrides of a SAML SP row (what the policy engine gets as ``app_policies``)."""
    out: dict = {"require_mfa": True} if sp.require_mfa else {}
    if getattr(sp, "require_phishing_resistant_mfa", False):
        out["require_phishing_resistant_mfa"] = True
    if sp.assigned_groups is not None:
        out["assigned_groups"] = list(sp.assigned_groups)
    return out


def saml_app_errors(app: dict, base_dir: Path | None = None) -> list[str]:
    """For ``idp.configfile.validate``: what is wrong with a ``protocol: saml`` app entry (empty when fine),
    so that bad metadata is reported with the other config errors instead of failing in ``apply``."""
    if app.get("protocol") != "saml":
        return []
    try:
        s = _sp_settings(app, base_dir)
    except (SamlConfigError, OSError) as exc:
        return [str(exc)]
    errors = []
    if app.get("nameid_format") is not None and app["nameid_format"] not in NAMEID_FORMATS:
        errors.append(f"nameid_format must be one of {', '.join(NAMEID_FORMATS)}")
    attrs = app.get("attributes")
    if attrs is not None and (not isinstance(attrs, dict) or any(v not in USER_FIELDS for v in attrs.values())):
        errors.append(f"attributes: a mapping of SAML attribute names to {', '.join(USER_FIELDS)}")
    if bool(app.get("require_signed_requests", s["authn_requests_signed"])) and not s["certificate"]:
        errors.append("signed requests are required but the SP has no certificate")
    return errors


def assigned_apps(db, ws_id: str) -> list:
    """For ``hub.app_access.readers``: the workspace's SAML SPs and their assignments. Losing one is audited, the
    SP is sent a back-channel LogoutRequest where it has a SOAP SingleLogoutService (``slo.app_lost``), and every
    later SSO to it is refused."""
    from idp.assignments import App

    return [App("saml", r.entity_id, r.slug or r.entity_id, None if r.assigned_groups is None
                else tuple(r.assigned_groups))
            for r in db.execute(select(SamlServiceProvider.entity_id, SamlServiceProvider.slug,
                                       SamlServiceProvider.assigned_groups)
                                .where(SamlServiceProvider.workspace_id == ws_id))]


def launcher_entries(db, ws) -> list:
    """For ``hub.launcher.readers``: the workspace's SAML SPs as launcher tiles (``idp.launcher``); an SP opens
    from idhub only with ``idp_initiated`` (the launch POST)."""
    from idp.launcher import Entry

    return [Entry("saml", r.slug, r.name or "", None if r.assigned_groups is None else tuple(r.assigned_groups),
                  r.show_in_launcher is not False, r.description, r.launcher_position, r.created_at, None,
                  bool(r.idp_initiated), bool(r.require_mfa))
            for r in db.scalars(select(SamlServiceProvider).where(SamlServiceProvider.workspace_id == ws.id,
                                                                  SamlServiceProvider.slug != ""))]
