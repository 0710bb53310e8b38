"""Downstream SAML service providers from the config file's ``apps`` entries (``protocol: saml``)."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from sqlalchemy import select

from saml.models import SamlServiceProvider
from saml.xml import BINDING_POST, BINDING_REDIRECT, MAX_METADATA, NS, XmlError, cert_pem, parse, pem_body, text_of

NAMEID_EMAIL = "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress"
NAMEID_PERSISTENT = "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"
NAMEID_TRANSIENT = "urn:oasis:names:tc:SAML:2.0:nameid-format:transient"
NAMEID_UNSPECIFIED = "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified"
NAMEID_FORMATS = (NAMEID_EMAIL, NAMEID_PERSISTENT, NAMEID_TRANSIENT, NAMEID_UNSPECIFIED)
USER_FIELDS = ("email", "name", "groups", "id", "given_name", "family_name", "display_name")
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
    cert = None
    for kd in sp.findall("md:KeyDescriptor", NS):
        if kd.get("use") in (None, "signing"):
            el = kd.find("ds:KeyInfo/ds:X509Data/ds:X509Certificate", NS)
            if el is not None:
                cert = check_cert(text_of(el), "metadata certificate")
                break
    slo = None
    for el in sp.findall("md:SingleLogoutService", NS):
        if el.get("Binding") == BINDING_REDIRECT:  # our LogoutResponses use HTTP-Redirect
            slo = check_url(el.get("Location"), "SingleLogoutService")
            break
    formats = [text_of(el) for el in sp.findall("md:NameIDFormat", NS)]
    return {"entity_id": entity_id, "acs": acs, "certificate": cert, "slo_url": slo,
            "want_assertions_signed": sp.get("WantAssertionsSigned") == "true",
            "authn_requests_signed": sp.get("AuthnRequestsSigned") == "true",
            "nameid_formats": [f for f in formats if f in NAMEID_FORMATS]}


def _sp_settings(app: dict, base_dir: Path | None) -> dict:
    meta = app.get("metadata_xml")
    if not meta and app.get("metadata_file"):
        path = Path(app["metadata_file"])
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if path.stat().st_size > MAX_METADATA:
            raise SamlConfigError("metadata_file: too large")
        meta = path.read_bytes()
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
               "want_assertions_signed": True, "authn_requests_signed": False, "nameid_formats": []}
    if len(out["entity_id"]) > 1024:
        raise SamlConfigError("entityID too long")
    return out


def apply_saml_apps(db, workspace, apps: list[dict], base_dir: Path | None = None) -> None:
    """Upsert the workspace's SAML service providers by entity ID. Apps removed from the file are left alone.

    ``apps`` are validated entries (``idp.configfile._apps``); OIDC apps in the list are skipped. A bad entry
    raises ``SamlConfigError`` (a ``ValueError``) naming the app. ``metadata_url`` is not fetched (yet)."""
    for app in apps:
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
        row.certificate = s["certificate"]
        row.nameid_format = fmt
        row.attributes = dict(attrs)
        row.sign_response = bool(app.get("sign_response", False))
        row.sign_assertion = bool(app.get("sign_assertion", True)) or not row.sign_response
        row.require_signed_requests = require_signed
        row.require_mfa = bool(app.get("require_mfa"))
        row.idp_initiated = bool(app.get("idp_initiated"))
    db.flush()


def find_sp(db, workspace_id: str, entity_id: str | None) -> SamlServiceProvider | None:
    if not entity_id or not isinstance(entity_id, str) or len(entity_id) > 1024:
        return None
    return db.scalar(select(SamlServiceProvider).where(SamlServiceProvider.workspace_id == workspace_id,
                                                       SamlServiceProvider.entity_id == entity_id))


def app_policy_lookup(hub):
    """For ``hub.app_policy_lookups``: the per-app policy overrides of a SAML SP (by slug or entity ID)."""

    def lookup(ws, app: str):
        with hub.db() as db:
            row = db.scalar(select(SamlServiceProvider).where(SamlServiceProvider.workspace_id == ws.id,
                                                              SamlServiceProvider.slug == app))
            if row is None:
                row = find_sp(db, ws.id, app)
        if row is None:
            return None
        return {"require_mfa": True} if row.require_mfa else {}

    return lookup


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
    if app.get("metadata_url") and not (app.get("metadata_xml") or app.get("metadata_file")):
        errors.append("metadata_url is not supported yet: use metadata_xml or metadata_file")
    if bool(app.get("require_signed_requests", s["authn_requests_signed"])) and not s["certificate"]:
        errors.append("signed requests are required but the SP has no certificate")
    return errors
