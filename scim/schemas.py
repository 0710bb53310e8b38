"""SCIM schemas (RFC 7643): attribute definitions, the discovery documents, and the schema-driven cleaning of
incoming resources ("liberal in what you accept, strict in what you store"). Plain Python."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

from scim.errors import InvalidSyntax, InvalidValue

USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE_SCHEMA = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
LIST_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
PATCH_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
SPC_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"
RT_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:ResourceType"
SCHEMA_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Schema"

MAX_STRING = 1024
MAX_VALUES = 100  # elements of one multi-valued attribute (members excepted)
MAX_MEMBERS = 10000  # members written in one request


@dataclass(frozen=True)
class Attr:
    name: str
    type: str = "string"  # string | boolean | complex | reference | dateTime | integer | decimal | binary
    multi: bool = False
    required: bool = False
    case_exact: bool = False
    mutability: str = "readWrite"  # readOnly | readWrite | immutable | writeOnly
    returned: str = "default"  # always | never | default | request
    uniqueness: str = "none"
    sub: tuple[Attr, ...] = ()
    canonical: tuple[str, ...] = ()
    ref_types: tuple[str, ...] = ()
    description: str = ""

    @property
    def key(self) -> str:
        return self.name.lower()

    def subattr(self, name: str) -> Attr | None:
        low = name.lower()
        return next((s for s in self.sub if s.key == low), None)

    def to_schema(self) -> dict:
        out = {
            "name": self.name,
            "type": self.type,
            "multiValued": self.multi,
            "description": self.description or self.name,
            "required": self.required,
            "mutability": self.mutability,
            "returned": self.returned,
        }
        if self.type in ("string", "reference", "binary"):
            out["caseExact"] = self.case_exact
        if self.type != "complex":
            out["uniqueness"] = self.uniqueness
        if self.canonical:
            out["canonicalValues"] = list(self.canonical)
        if self.ref_types:
            out["referenceTypes"] = list(self.ref_types)
        if self.sub:
            out["subAttributes"] = [s.to_schema() for s in self.sub]
        return out


def _multi(name: str, types: tuple[str, ...] = ("work", "home", "other"), value_type: str = "string",
           description: str = "") -> Attr:
    return Attr(name, "complex", multi=True, description=description, sub=(
        Attr("value", value_type),
        Attr("display"),
        Attr("type", canonical=types),
        Attr("primary", "boolean"),
    ))


USER_ATTRS: tuple[Attr, ...] = (
    Attr("userName", required=True, uniqueness="server",
         description="The sign-in e-mail address; unique in the workspace under case folding and NFKC."),
    Attr("name", "complex", sub=(
        Attr("formatted"), Attr("familyName"), Attr("givenName"), Attr("middleName"),
        Attr("honorificPrefix"), Attr("honorificSuffix"),
    )),
    Attr("displayName"),
    Attr("nickName"),
    Attr("profileUrl", "reference", ref_types=("external",)),
    Attr("title"),
    Attr("userType"),
    Attr("preferredLanguage"),
    Attr("locale"),
    Attr("timezone"),
    Attr("active", "boolean", required=True,
         description="Whether the user may sign in (every account has a state; true when omitted on create)."),
    Attr("password", mutability="writeOnly", returned="never", case_exact=True),
    _multi("emails"),
    _multi("phoneNumbers", ("work", "home", "mobile", "fax", "pager", "other")),
    _multi("ims", ("aim", "gtalk", "icq", "xmpp", "msn", "skype", "qq", "yahoo")),
    _multi("photos", ("photo", "thumbnail"), value_type="reference"),
    Attr("addresses", "complex", multi=True, sub=(
        Attr("formatted"), Attr("streetAddress"), Attr("locality"), Attr("region"), Attr("postalCode"),
        Attr("country"), Attr("type", canonical=("work", "home", "other")), Attr("primary", "boolean"),
    )),
    Attr("groups", "complex", multi=True, mutability="readOnly", sub=(
        Attr("value", mutability="readOnly"),
        Attr("$ref", "reference", mutability="readOnly", ref_types=("Group",)),
        Attr("display", mutability="readOnly"),
        Attr("type", mutability="readOnly", canonical=("direct", "indirect")),
    )),
    _multi("entitlements", ()),
    _multi("roles", ()),
)
ENTERPRISE_ATTRS: tuple[Attr, ...] = (
    Attr("employeeNumber"),
    Attr("costCenter"),
    Attr("organization"),
    Attr("division"),
    Attr("department"),
    Attr("manager", "complex", sub=(
        Attr("value"),
        Attr("$ref", "reference", ref_types=("User",)),
        Attr("displayName", mutability="readOnly"),
    )),
)
GROUP_ATTRS: tuple[Attr, ...] = (
    Attr("displayName", required=True, uniqueness="server"),
    Attr("members", "complex", multi=True, sub=(
        Attr("value", mutability="immutable"),
        Attr("$ref", "reference", mutability="immutable", ref_types=("User",)),
        Attr("display", mutability="readOnly", description="The member's name."),
        Attr("type", mutability="immutable", canonical=("User",)),
    )),
)
# Attributes every resource has (RFC 7643 §3.1); not part of the schema documents' attribute lists.
COMMON_ATTRS: tuple[Attr, ...] = (
    Attr("id", mutability="readOnly", returned="always", case_exact=True, uniqueness="server"),
    Attr("externalId", case_exact=True),
    Attr("meta", "complex", mutability="readOnly", sub=(
        Attr("resourceType", mutability="readOnly"), Attr("created", "dateTime", mutability="readOnly"),
        Attr("lastModified", "dateTime", mutability="readOnly"), Attr("location", "reference", mutability="readOnly"),
        Attr("version", mutability="readOnly"),
    )),
)


@dataclass(frozen=True)
class ResourceType:
    name: str
    endpoint: str
    schema: str
    attrs: tuple[Attr, ...]
    extensions: dict[str, tuple[Attr, ...]] = field(default_factory=dict)

    def attr(self, name: str) -> Attr | None:
        low = name.lower()
        return next((a for a in (*COMMON_ATTRS, *self.attrs) if a.key == low), None)

    def schema_uris(self) -> set[str]:
        return {self.schema, *self.extensions}

    def ext_uri(self, name: str) -> str | None:
        low = name.lower()
        return next((u for u in self.extensions if u.lower() == low), None)


USER = ResourceType("User", "/Users", USER_SCHEMA, USER_ATTRS, {ENTERPRISE_SCHEMA: ENTERPRISE_ATTRS})
GROUP = ResourceType("Group", "/Groups", GROUP_SCHEMA, GROUP_ATTRS)
RESOURCE_TYPES = {"User": USER, "Group": GROUP}


# ---- discovery documents ----------------------------------------------------------------------------
def schema_documents(base: str) -> list[dict]:
    docs = []
    for uri, name, attrs, desc in (
        (USER_SCHEMA, "User", USER_ATTRS, "User Account"),
        (GROUP_SCHEMA, "Group", GROUP_ATTRS, "Group"),
        (ENTERPRISE_SCHEMA, "EnterpriseUser", ENTERPRISE_ATTRS, "Enterprise User"),
    ):
        docs.append({
            "schemas": [SCHEMA_SCHEMA],
            "id": uri,
            "name": name,
            "description": desc,
            "attributes": [a.to_schema() for a in attrs],
            "meta": {"resourceType": "Schema", "location": f"{base}/Schemas/{uri}"},
        })
    return docs


def resource_type_documents(base: str) -> list[dict]:
    out = []
    for rt in RESOURCE_TYPES.values():
        out.append({
            "schemas": [RT_SCHEMA],
            "id": rt.name,
            "name": rt.name,
            "endpoint": rt.endpoint,
            "description": rt.name,
            "schema": rt.schema,
            "schemaExtensions": [{"schema": u, "required": False} for u in rt.extensions],
            "meta": {"resourceType": "ResourceType", "location": f"{base}/ResourceTypes/{rt.name}"},
        })
    return out


def service_provider_config(base: str, max_results: int, max_payload: int, max_operations: int = 0) -> dict:
    return {
        "schemas": [SPC_SCHEMA],
        "documentationUri": "https://github.com/idhub/idhub/blob/main/docs/scim.md",
        "patch": {"supported": True},
        "bulk": {"supported": max_operations > 0, "maxOperations": max_operations,
                 "maxPayloadSize": max_payload if max_operations > 0 else 0},
        "filter": {"supported": True, "maxResults": max_results},
        "changePassword": {"supported": True},
        "sort": {"supported": True},
        "etag": {"supported": True},
        "authenticationSchemes": [{
            "type": "oauthbearertoken",
            "name": "Bearer token",
            "description": "A per-workspace token from the scim_tokens of the config file, in the Authorization "
                           "header (never in the URL).",
            "primary": True,
        }],
        "meta": {"resourceType": "ServiceProviderConfig", "location": f"{base}/ServiceProviderConfig"},
    }


# ---- cleaning incoming values -----------------------------------------------------------------------
_DATETIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})?$")


_UNSTORABLE_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


def unstorable(s: str) -> bool:
    """Whether ``s`` has a character that no attribute holds: a control character other than tab, line feed and
    carriage return (PostgreSQL cannot store NUL at all), or an unpaired surrogate (no UTF-8 encoding). Incoming
    values with one are ``invalidValue``; filter strings with one are ``invalidFilter`` (they cannot match)."""
    return _UNSTORABLE_RE.search(s) is not None


def clean_value(attr: Attr, value, path: str, *, drop_readonly: bool = True):
    """One attribute's value, checked and normalised; ``None`` means "absent"."""
    if value is None:
        return None
    if attr.multi:
        if isinstance(value, dict) or not isinstance(value, list):
            value = [value]  # liberal: a single value where a list is expected
        limit = MAX_MEMBERS if attr.name == "members" else MAX_VALUES
        if len(value) > limit:
            raise InvalidValue(f"{path}: at most {limit} values")
        out = []
        for i, item in enumerate(value):
            c = _clean_single(attr, item, f"{path}[{i}]", drop_readonly)
            if c is not None and c != {} and c not in out:
                out.append(c)
        if attr.type == "complex" and attr.subattr("primary"):
            seen = False
            for item in out:  # at most one primary value (RFC 7643 §2.4): the first one wins
                if item.get("primary") is True:
                    if seen:
                        item["primary"] = False
                    seen = True
        return out or None
    return _clean_single(attr, value, path, drop_readonly)


def _clean_single(attr: Attr, value, path: str, drop_readonly: bool):
    if value is None:
        return None
    t = attr.type
    if t == "complex":
        if not isinstance(value, dict):
            raise InvalidValue(f"{path}: must be an object")
        out = {}
        for k, v in value.items():
            sub = attr.subattr(k) if isinstance(k, str) else None
            if sub is None or (drop_readonly and sub.mutability == "readOnly"):
                continue  # unknown or read-only sub-attributes are ignored
            c = _clean_single(sub, v, f"{path}.{sub.name}", drop_readonly)
            if c is not None:
                out[sub.name] = c
        return out or None
    if t == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):  # Azure AD sends "True"
            return value.strip().lower() == "true"
        raise InvalidValue(f"{path}: must be true or false")
    if t in ("integer", "decimal"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidValue(f"{path}: must be a number")
        return int(value) if t == "integer" else value
    # string-like
    if isinstance(value, bool) or isinstance(value, dict | list):
        raise InvalidValue(f"{path}: must be a string")
    if isinstance(value, int | float):
        value = str(value)  # liberal: employee numbers sent as numbers
    if not isinstance(value, str):
        raise InvalidValue(f"{path}: must be a string")
    if len(value) > MAX_STRING:
        raise InvalidValue(f"{path}: longer than {MAX_STRING} characters")
    if unstorable(value):
        raise InvalidValue(f"{path}: contains control characters or unpaired surrogates")
    if t == "dateTime":
        if not _DATETIME_RE.match(value):
            raise InvalidValue(f"{path}: must be an xsd:dateTime")
        try:
            datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidValue(f"{path}: must be an xsd:dateTime") from None
    return value


def check_schemas(body: dict, rt: ResourceType) -> None:
    schemas = body.get("schemas")
    if not isinstance(schemas, list) or not all(isinstance(s, str) for s in schemas):
        raise InvalidSyntax("'schemas' must be a list of schema URIs")
    lowered = {s.lower() for s in schemas}
    if rt.schema.lower() not in lowered:
        raise InvalidSyntax(f"'schemas' must contain {rt.schema}")
    known = {u.lower() for u in rt.schema_uris()}
    unknown = [s for s in schemas if s.lower() not in known]
    if unknown:
        raise InvalidSyntax(f"unknown schema {unknown[0][:100]!r}")


def clean_resource(body: dict, rt: ResourceType, *, keep_read_only_subs: bool = False) -> dict:
    """A whole resource as sent by a client → ``{canonical attribute: value, extension URI: {...}}``.

    Unknown attributes are ignored, read-only ones (``meta``, ``groups``) dropped; ``id`` is returned as sent so
    that the caller can refuse a different one. Attribute names are matched case-insensitively.
    ``keep_read_only_subs``: read-only sub-attributes of writable attributes (``members.display``) are kept, for
    the document that a PATCH's value filters are matched against (its result is cleaned again, without them)."""
    out: dict = {}
    for k, v in body.items():
        if not isinstance(k, str) or k.lower() == "schemas":
            continue
        uri = rt.ext_uri(k)
        if uri is not None:
            if v is None:
                continue
            if not isinstance(v, dict):
                raise InvalidValue(f"{uri}: must be an object")
            ext = {}
            for ek, ev in v.items():
                a = next((x for x in rt.extensions[uri] if isinstance(ek, str) and x.key == ek.lower()), None)
                if a is None or a.mutability == "readOnly":
                    continue
                c = clean_value(a, ev, f"{uri}:{a.name}", drop_readonly=not keep_read_only_subs)
                if c is not None:
                    ext[a.name] = c
            if ext:
                out[uri] = ext
            continue
        a = rt.attr(k)
        if a is None:
            continue
        if a.name == "id":
            out["id"] = v
            continue
        if a.mutability == "readOnly":
            continue
        c = clean_value(a, v, a.name, drop_readonly=not keep_read_only_subs)
        if c is not None:
            out[a.name] = c
    return out
