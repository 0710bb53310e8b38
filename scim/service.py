"""The SCIM 2.0 service (RFC 7643/7644): authentication, Users, Groups, discovery. Plain Python.

``ScimService.handle(ws_slug, ScimRequest) -> ScimResponse`` (status, body, headers); ``scim.web`` only converts
Flask requests and responses. Every query is restricted to the caller's workspace outside any parsed filter."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
import unicodedata
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from sqlalchemy import (
    Integer,
    String,
    and_,
    asc,
    bindparam,
    delete,
    desc,
    exists,
    func,
    literal,
    literal_column,
    null,
    or_,
    select,
    text,
    true,
    union_all,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import aliased

from idp.accounts import SLUG_RE, InvalidEmail, clean_email
from idp.db import InsertPart
from idp.invalidation import SCIM_TOKENS, generation
from idp.lifecycle import KEEP, PROTECTED, AccountError, Actor, Guard, check_allowed, is_privileged
from idp.models import Group, GroupMember, User, Workspace, new_id, utcnow
from scim import errors as E
from scim.config import hash_token, same_hash
from scim.filters import (
    Column,
    Compare,
    Relation,
    Translator,
    compare_column,
    compare_constant,
    parse_filter,
    parse_path,
)
from scim.models import ScimToken, ScimValue
from scim.patch import Patcher
from scim.schemas import (
    ENTERPRISE_SCHEMA,
    GROUP,
    LIST_SCHEMA,
    MAX_STRING,
    PATCH_SCHEMA,
    USER,
    Attr,
    ResourceType,
    check_schemas,
    clean_resource,
    resource_type_documents,
    schema_documents,
    service_provider_config,
)

log = logging.getLogger("idhub.scim")

DEFAULT_MAX_BODY = 1024 * 1024  # bytes; IDHUB_SCIM_MAX_BODY (config.settings) sets ScimService.max_body
MAX_RESULTS = 200
DEFAULT_COUNT = 100
MAX_START = 10**9
_REQUEST_DB: ContextVar = ContextVar("scim_request_db", default=None)
MAX_OPERATIONS = 1000  # per /Bulk request; its payload is limited by max_body like any other request
BULK_REQUEST = "urn:ietf:params:scim:api:messages:2.0:BulkRequest"
BULK_RESPONSE = "urn:ietf:params:scim:api:messages:2.0:BulkResponse"
BULK_METHODS = ("POST", "PUT", "PATCH", "DELETE")
BULK_ID_RE = re.compile(r"^[A-Za-z0-9._~-]{1,100}$")
SEARCH_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:SearchRequest"
USER_COLUMNS_ATTRS = {"userName", "externalId", "displayName", "active", "password", "id"}
# Every user and group id is a UUID (idp.models.new_id): any other id cannot exist and is answered 404 without a
# query (a NUL in it would be refused by PostgreSQL, not merely not found).
ID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def describe_size(n: int) -> str:
    """``1 MiB``, ``256 KiB`` or ``5000 bytes``."""
    for unit, size in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"


def too_large(max_body: int) -> E.PayloadTooLarge:
    return E.PayloadTooLarge(f"The body is larger than {describe_size(max_body)}.")


@dataclass(frozen=True)
class ScimRequest:
    method: str
    path: str  # after /scim/v2, e.g. "/Users/abc"
    query: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes = b""


@dataclass
class ScimResponse:
    status: int
    body: dict | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Caller:
    workspace_id: str
    workspace_slug: str
    token_name: str
    read_only: bool
    token_id: str = ""
    cached: bool = False  # from the token cache: every query must also check the token (``_still_valid``)

    @property
    def actor(self) -> str:
        return f"scim:{self.token_name}"

    def as_actor(self) -> Actor:
        return Actor.scim(self.token_name, self.token_id or None)


def _is_listing(req: ScimRequest) -> bool:
    """GET /Users, GET /Groups, POST /Users/.search, /Groups/.search and /.search: reads that may use a cached
    caller (they re-check the token in their own query)."""
    parts = [p for p in req.path.split("/") if p]
    if req.method in ("GET", "HEAD"):
        return len(parts) == 1 and parts[0] in ("Users", "Groups")
    if req.method == "POST":
        return parts in ([".search"], ["Users", ".search"], ["Groups", ".search"])
    return False


def iso(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def fold(s: str) -> str:
    return unicodedata.normalize("NFKC", s).casefold()


def version_of(body: dict) -> str:
    payload = {k: v for k, v in body.items() if k != "meta"}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return f'W/"{digest}"'


def _etag_matches(header: str, version: str) -> bool:
    tags = [t.strip() for t in header.split(",") if t.strip()]
    weak = version.removeprefix("W/")
    return any(t == "*" or t.removeprefix("W/") == weak for t in tags)


def _find(d: dict, name: str):
    low = name.lower()
    return next((k for k in d if isinstance(k, str) and k.lower() == low), None)


# ---- projection (attributes / excludedAttributes) -------------------------------------------------------------
def _split_attr_list(raw) -> list[str]:
    if raw is None:
        return []
    items = raw if isinstance(raw, list) else str(raw).split(",")
    out = [str(i).strip() for i in items if str(i).strip()]
    if len(out) > 100 or any(len(i) > 300 for i in out):
        raise E.InvalidValue("too many or too long attribute names")
    return out


def _locate(body: dict, rt: ResourceType, raw: str) -> tuple[dict, str, str | None] | None:
    """(container, key, sub key) of an attribute path in a rendered resource, or None."""
    uri = rt.ext_uri(raw)
    if uri is not None:
        return (body, uri, None) if uri in body else None
    try:
        p = parse_path(raw)
    except E.InvalidFilter:
        return None
    container = body
    if p.uri:
        uri = rt.ext_uri(p.uri)
        if uri is None:
            if p.uri.lower() != rt.schema.lower():
                return None
        else:
            container = body.get(uri)
            if not isinstance(container, dict):
                return None
    key = _find(container, p.attr)
    if key is None:
        return None
    return container, key, p.sub


def project(body: dict, rt: ResourceType, attributes: list[str], excluded: list[str]) -> dict:
    if attributes:
        out: dict = {"schemas": body["schemas"], "id": body["id"]}
        for raw in attributes:
            loc = _locate(body, rt, raw)
            if loc is None:
                continue
            container, key, sub = loc
            target = out
            if container is not body:
                uri = next(u for u in rt.extensions if body.get(u) is container)
                target = out.setdefault(uri, {})
            value = container[key]
            if sub is None:
                target[key] = value
            elif isinstance(value, dict):
                sk = _find(value, sub)
                if sk is not None:
                    target.setdefault(key, {})[sk] = value[sk]
            elif isinstance(value, list):
                picked = []
                for e in value:
                    sk = _find(e, sub) if isinstance(e, dict) else None
                    picked.append({sk: e[sk]} if sk else {})
                have = target.get(key)
                if isinstance(have, list) and len(have) == len(picked):
                    for h, p in zip(have, picked, strict=True):
                        h.update(p)
                else:
                    target[key] = picked
        return out
    if excluded:
        out = json.loads(json.dumps(body))
        for raw in excluded:
            loc = _locate(out, rt, raw)
            if loc is None:
                continue
            container, key, sub = loc
            if container is out and key in ("id", "schemas"):
                continue
            if sub is None:
                container.pop(key, None)
            elif isinstance(container[key], dict):
                sk = _find(container[key], sub)
                if sk:
                    container[key].pop(sk)
            elif isinstance(container[key], list):
                for e in container[key]:
                    if isinstance(e, dict) and _find(e, sub):
                        e.pop(_find(e, sub))
        return out
    return body


_INSERT_VALUES = ScimValue.__table__.insert()
# PostgreSQL: the rows as six arrays, one prebuilt statement (psycopg's executemany would pipeline one INSERT per
# row, a Python-side cost per value; a multi-row VALUES would be a new statement for each number of rows)
_INSERT_VALUES_PG = text(
    "INSERT INTO scim_values (owner_id, attr, idx, sub, value, folded) "
    "SELECT * FROM unnest(CAST(:owner_id AS varchar[]), CAST(:attr AS varchar[]), CAST(:idx AS integer[]), "
    "CAST(:sub AS varchar[]), CAST(:value AS varchar[]), CAST(:folded AS varchar[]))")
_VALUE_COLUMNS = ("owner_id", "attr", "idx", "sub", "value", "folded")
# The same rows as a part of a new user's one statement (idp.db.insert_together): the arrays as ``v_<column>``.
_VALUES_PART = InsertPart(
    "INSERT INTO scim_values (owner_id, attr, idx, sub, value, folded)",
    "SELECT * FROM unnest(CAST(:v_owner_id AS varchar[]), CAST(:v_attr AS varchar[]), CAST(:v_idx AS integer[]), "
    "CAST(:v_sub AS varchar[]), CAST(:v_value AS varchar[]), CAST(:v_folded AS varchar[]))")
# elsewhere: the INSERT of one row, executed for each (its parameters are the list of rows)
_VALUES_ROW_PART = InsertPart.values(ScimValue.__table__, _VALUE_COLUMNS, "")
_DELETE_VALUES = ScimValue.__table__.delete().where(ScimValue.__table__.c.owner_id == bindparam("owner"))

# The one rule of a cached caller's token, checked again by every statement that serves it (listings, the
# re-check after an empty answer) and by a user's create in the statement that writes it: unrevoked, of this
# workspace (id and address), on the enterprise plan. A create also needs it still writable, under the name the
# audit event gives. An uncorrelated EXISTS: evaluated once per statement.
_TOKEN_RULE = ("EXISTS (SELECT 1 FROM scim_tokens AS t JOIN workspaces AS w ON w.id = t.workspace_id "
               "WHERE t.id = :tok_id AND t.revoked_at IS NULL AND t.workspace_id = :tok_ws AND w.slug = :tok_slug "
               "AND w.plan = 'enterprise'{})")
_TOKEN_STILL_VALID = _TOKEN_RULE.format("")
_TOKEN_STILL_WRITABLE = _TOKEN_RULE.format(" AND t.name = :tok_name AND t.read_only IS NOT TRUE")
# parsed once (a listing from a cached token binds its values to a copy; the re-check selects the writable rule)
_STILL_VALID_CLAUSE = text(_TOKEN_STILL_VALID)
_STILL_WRITABLE_SELECT = text("SELECT " + _TOKEN_STILL_WRITABLE)


def _token_params(caller: Caller, *, name: bool = False) -> dict:
    params = {"tok_id": caller.token_id, "tok_ws": caller.workspace_id, "tok_slug": caller.workspace_slug}
    if name:
        params["tok_name"] = caller.token_name
    return params


_CREATE_WROTE: ContextVar = ContextVar("scim_create_wrote", default=False)  # the request's create has written


class _StaleCaller(Exception):
    """A cached caller's token no longer passes ``_TOKEN_STILL_WRITABLE``: authenticate again and retry."""


# ---- the service ----------------------------------------------------------------------------------------------
CALLER_TTL = 30.0  # seconds a validated token is remembered at most (reads re-check it in their own query anyway;
# a token revoked on any node drops the entries at once: idp.invalidation)
CALLER_CACHE_MAX = 1024


# The token check of every request that is not served from the token cache: one prebuilt Core statement (no ORM
# entity loading, no statement building per request), the workspace and, outer-joined, the token with this hash.
_W, _T = Workspace.__table__.c, ScimToken.__table__.c
_AUTHENTICATE = (
    select(_W.id.label("ws_id"), _W.slug.label("ws_slug"), _W.plan, _T.id.label("token_id"),
           _T.workspace_id.label("token_workspace_id"), _T.name.label("token_name"), _T.read_only, _T.token_hash,
           _T.revoked_at)
    .select_from(Workspace.__table__.outerjoin(ScimToken.__table__, _T.token_hash == bindparam("h")))
    .where(_W.slug == bindparam("slug"))
)


class ScimService:
    def __init__(self, hub, clock=time.monotonic, max_body: int = DEFAULT_MAX_BODY):
        if isinstance(max_body, bool) or not isinstance(max_body, int) or max_body < 1:
            raise ValueError("max_body must be a positive number of bytes")
        self.hub = hub
        self._clock = clock
        self.max_body = max_body  # the largest request body, in bytes (413 above it)
        # (workspace slug, SHA-256 of the token) → (Caller, expiry). Only tokens that authenticated are added, so
        # wrong tokens cannot fill it; the slug is part of the key and every read re-checks the token's workspace.
        # Emptied when a token is revoked on any node (the generation of SCIM_TOKENS moved: idp.invalidation).
        self._callers: dict[tuple[str, str], tuple[Caller, float]] = {}
        self._callers_generation = generation(SCIM_TOKENS)
        self._callers_lock = threading.Lock()

    # -- URLs
    def base(self, slug: str) -> str:
        return self.hub.url(f"/w/{slug}/scim/v2")

    # -- entry point
    def handle(self, ws_slug: str, req: ScimRequest) -> ScimResponse:
        with self.hub.db() as db:  # one session (one pooled connection) per request, see _db
            token = _REQUEST_DB.set(db)
            try:
                fast = _is_listing(req)
                create = (req.method == "POST" and req.path.strip("/") == "Users"
                          and db.get_bind().dialect.name == "postgresql" and not self.hub.audit.inline)
                if fast or create:
                    # A listing is a single read: autocommit spares the BEGIN and ROLLBACK round trips. A user's
                    # create writes in one statement, atomic by itself (``_create_user``): no BEGIN and COMMIT
                    # round trips either.
                    db.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
                # A user's create may start from a cached caller: its statement checks the token again before
                # it writes (``_TOKEN_STILL_WRITABLE``). When that check fails, the create is redone from a caller
                # the database authenticates, whose verdict (401, 403 read-only or plan, 404) is the answer. An
                # error answer given before the statement ran (an invalid body, a taken userName) stands only if
                # the token still passes that check (one query): the token's verdict comes first, as it does for
                # a caller the database authenticated.
                caller = self.authenticate(ws_slug, req, cached=fast or create)
                if not (create and caller.cached):
                    return self.dispatch(caller, req)
                wrote = _CREATE_WROTE.set(False)
                try:
                    return self.dispatch(caller, req)
                except (_StaleCaller, E.ScimError) as exc:
                    if _CREATE_WROTE.get():
                        raise
                    if not isinstance(exc, _StaleCaller) and self._still_writable(caller):
                        raise
                    self._forget(caller)
                    return self.dispatch(self.authenticate(ws_slug, req), req)
                finally:
                    _CREATE_WROTE.reset(wrote)
            except E.ScimError as exc:
                return ScimResponse(exc.status, exc.to_error(), dict(exc.headers))
            finally:
                _REQUEST_DB.reset(token)

    @contextmanager
    def _db(self, end: bool = True):
        """The request's session (a new one outside ``handle``). Each block leaves it clean: on an error its
        transaction is rolled back; otherwise (unless ``end`` is false, so that authentication and the query
        after it share one transaction) an uncommitted read transaction is ended and the identity map emptied,
        so that the next block (the next operation of a bulk) reads fresh rows."""
        shared = _REQUEST_DB.get()
        if shared is None:
            with self.hub.db() as db:
                yield db
            return
        try:
            yield shared
        except BaseException:
            shared.rollback()
            shared.expunge_all()
            raise
        if end:
            shared.expunge_all()
            if shared.in_transaction():
                shared.rollback()

    def authenticate(self, ws_slug: str, req: ScimRequest, cached: bool = False) -> Caller:
        """The caller of a request. ``cached``: a token that authenticated in the last ``CALLER_TTL`` seconds for
        this workspace is taken from memory, marked ``cached``; the listing then checks it again in its own query
        (``_still_valid``) and calls ``recheck`` when that query finds nothing, so that a revoked token, a token
        moved to another workspace or a plan change is refused at once, without an extra round trip."""
        if any(k.lower() in ("access_token", "token", "bearer") for k in req.query):
            raise E.Unauthorized("Send the bearer token in the Authorization header, never in the URL.")
        scheme, _, token = req.headers.get("authorization", "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > 512:
            raise E.Unauthorized()
        hashed = hash_token(token)
        if not SLUG_RE.match(ws_slug or ""):
            raise E.NotFound("There is no workspace at this address.")
        key = (ws_slug, hashed)
        gen = generation(SCIM_TOKENS)  # a token revoked on any node empties the cache (idp.invalidation)
        if gen != self._callers_generation:
            with self._callers_lock:
                self._callers.clear()
                self._callers_generation = gen
        if cached:
            hit = self._callers.get(key)
            if hit is not None and hit[1] > self._clock():
                return hit[0]
        caller = self._authenticate_db(ws_slug, hashed)
        if generation(SCIM_TOKENS) != gen:  # revoked meanwhile: this answer may be stale, do not keep it
            return caller
        with self._callers_lock:
            if len(self._callers) >= CALLER_CACHE_MAX:
                now = self._clock()
                for k in [k for k, (_c, exp) in self._callers.items() if exp <= now] or list(self._callers)[:64]:
                    self._callers.pop(k, None)
            self._callers[key] = (replace(caller, cached=True), self._clock() + CALLER_TTL)
        return caller

    def forget_tokens(self) -> None:
        """Empty the token cache (reads re-check tokens anyway; this is for tests and operators)."""
        with self._callers_lock:
            self._callers.clear()

    def recheck(self, caller: Caller) -> None:
        """Raise the authentication error of a cached caller whose token no longer authenticates (its entry is
        dropped); nothing when it still does."""
        if not caller.cached:
            return
        with self._db(end=False) as db:
            ok = db.scalar(select(self._still_valid(caller)))
        if not ok:
            self._forget(caller)
            # the full check names the reason (401 revoked or unknown, 404 elsewhere, 403 plan)
            raise self._auth_error(caller)

    def _still_writable(self, caller: Caller) -> bool:
        """Whether the caller's token still passes ``_TOKEN_STILL_WRITABLE`` (one query)."""
        with self._db(end=False) as db:
            return bool(db.scalar(_STILL_WRITABLE_SELECT, _token_params(caller, name=True)))

    def _forget(self, caller: Caller) -> None:
        """Drop the cached entries of the caller's token."""
        with self._callers_lock:
            for k in [k for k, (c, _e) in self._callers.items() if c.token_id == caller.token_id]:
                self._callers.pop(k, None)

    def _auth_error(self, caller: Caller) -> E.ScimError:
        with self._db(end=False) as db:
            row = db.execute(select(ScimToken.revoked_at, ScimToken.workspace_id, Workspace.plan, Workspace.slug)
                             .join(Workspace, Workspace.id == ScimToken.workspace_id)
                             .where(ScimToken.id == caller.token_id)).first()
        if row is None or row.revoked_at is not None:
            return E.Unauthorized("The bearer token is not valid.")
        if row.workspace_id != caller.workspace_id or row.slug != caller.workspace_slug:
            return E.NotFound("There is no workspace at this address.")
        return E.Forbidden("SCIM provisioning needs the enterprise plan.")

    @staticmethod
    def _still_valid(caller: Caller):
        """A condition that is true while the caller's token passes ``_TOKEN_STILL_VALID``."""
        return _STILL_VALID_CLAUSE.bindparams(**_token_params(caller))

    def _authenticate_db(self, ws_slug: str, hashed: str) -> Caller:
        with self._db(end=False) as db:  # one round trip: the workspace and (outer-joined) the token
            found = db.connection().execute(_AUTHENTICATE, {"slug": ws_slug, "h": hashed}).first()
        if found is None:
            raise E.NotFound("There is no workspace at this address.")
        if found.token_id is None or found.revoked_at is not None or not same_hash(found.token_hash, hashed):
            raise E.Unauthorized("The bearer token is not valid.")
        if found.token_workspace_id != found.ws_id:
            raise E.NotFound("There is no workspace at this address.")
        if found.plan != "enterprise":
            raise E.Forbidden("SCIM provisioning needs the enterprise plan.")
        return Caller(found.ws_id, found.ws_slug, found.token_name, found.read_only, found.token_id)

    def dispatch(self, caller: Caller, req: ScimRequest) -> ScimResponse:
        parts = [p for p in req.path.split("/") if p]
        method = req.method.upper()
        if parts and parts[0] == "Me":
            # RFC 7644 §3.11: /Me is optional. Every SCIM token is a provisioning client's credential (Okta,
            # Azure AD, an HR system), never a user's, so there is no "authenticated subject" to alias.
            raise E.NotImplementedScim("/Me is not supported: SCIM bearer tokens belong to provisioning clients, "
                                       "not to users.")
        if method not in ("GET", "HEAD") and caller.read_only:
            if not (parts and parts[-1] == ".search" and len(parts) <= 2 and method == "POST"):
                raise E.Forbidden("This token is read-only.")
        if not parts:
            raise E.NotFound("Unknown SCIM endpoint.")
        head = parts[0]
        base = self.base(caller.workspace_slug)
        if head in ("ServiceProviderConfig", "Schemas", "ResourceTypes"):
            if method != "GET":
                raise E.MethodNotAllowed()
            return self._discovery(base, parts)
        if head == ".search":
            if len(parts) > 1:
                raise E.NotFound("Unknown SCIM endpoint.")
            if method != "POST":
                raise E.MethodNotAllowed()
            return self.search_all(caller, self._json(req))
        if head == "Bulk":
            if len(parts) > 1:
                raise E.NotFound("Unknown SCIM endpoint.")
            if method != "POST":
                raise E.MethodNotAllowed()
            return self.bulk(caller, self._json(req))
        if head not in ("Users", "Groups") or len(parts) > 2:
            raise E.NotFound("Unknown SCIM endpoint.")
        rt = USER if head == "Users" else GROUP
        if len(parts) == 1:
            if method == "GET":
                return self.list(caller, rt, req.query)
            if method == "POST":
                return self.create(caller, rt, self._json(req), req.query)
            raise E.MethodNotAllowed()
        rid = parts[1]
        if rid == ".search":
            if method != "POST":
                raise E.MethodNotAllowed()
            return self.search(caller, rt, self._json(req))
        if method == "GET":
            return self.get(caller, rt, rid, req)
        if method == "PUT":
            return self.replace(caller, rt, rid, self._json(req), req)
        if method == "PATCH":
            return self.patch(caller, rt, rid, self._json(req), req)
        if method == "DELETE":
            return self.delete(caller, rt, rid, req)
        raise E.MethodNotAllowed()

    def _json(self, req: ScimRequest) -> dict:
        if len(req.body) > self.max_body:
            raise too_large(self.max_body)
        ctype = req.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype and ctype not in ("application/scim+json", "application/json"):
            raise E.UnsupportedMediaType()
        try:
            body = json.loads(req.body.decode("utf-8"))
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise E.InvalidSyntax("The body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise E.InvalidSyntax("The body must be a JSON object.")
        return body

    # -- discovery
    def _discovery(self, base: str, parts: list[str]) -> ScimResponse:
        head = parts[0]
        if head == "ServiceProviderConfig":
            if len(parts) > 1:
                raise E.NotFound()
            return ScimResponse(200, service_provider_config(base, MAX_RESULTS, self.max_body, MAX_OPERATIONS))
        docs = schema_documents(base) if head == "Schemas" else resource_type_documents(base)
        if len(parts) == 2:
            doc = next((d for d in docs if d["id"].lower() == parts[1].lower()), None)
            if doc is None:
                raise E.NotFound(f"Unknown {head[:-1].lower()}.")
            return ScimResponse(200, doc)
        if len(parts) > 2:
            raise E.NotFound()
        return ScimResponse(200, {"schemas": [LIST_SCHEMA], "totalResults": len(docs), "startIndex": 1,
                                  "itemsPerPage": len(docs), "Resources": docs})

    # -- translation helpers
    def _translator(self, rt: ResourceType, caller: Caller) -> Translator:
        def base() -> str:  # only when a filter names a URL (meta.location, $ref): tests translate without a hub
            return self.base(caller.workspace_slug)

        def url_of(prefix: str, id_column) -> Column:
            return Column(literal(base() + prefix, String) + id_column, case_exact=True)

        def version(op, value):
            if op == "pr":
                return true()  # every resource has one
            raise E.InvalidFilter("meta.version cannot be used in a filter (it is a digest of the resource); "
                                  "use If-None-Match or If-Match")

        model = User if rt is USER else Group
        special = {
            "meta.resourcetype": lambda op, value: compare_constant(rt.name, op, value),
            "meta.location": lambda op, value: compare_column(url_of(f"{rt.endpoint}/", model.id), op, value),
            "meta.version": version,
        }
        if rt is USER:
            columns = {
                "id": Column(User.id, case_exact=True),
                "externalid": Column(User.external_id, case_exact=True),
                "username": Column(func.coalesce(User.username_normalized, User.email_normalized), "folded"),
                "displayname": Column(User.display_name),
                "name.givenname": Column(User.given_name),
                "name.familyname": Column(User.family_name),
                "active": Column(User.active, "bool"),
                "meta.created": Column(User.created_at, "datetime"),
                "meta.lastmodified": Column(User.updated_at, "datetime"),
            }

            def groups(subs: set[str]):
                """A user's groups: GroupMember rows (joined to their group for ``display``); all direct."""
                gm = aliased(GroupMember)
                rows = select(gm.user_id).where(gm.user_id == User.id)
                cols = {"value": Column(gm.group_id, case_exact=True), "type": Column(literal("direct", String))}
                if "display" in subs:
                    g = aliased(Group)
                    rows = rows.join(g, g.id == gm.group_id)
                    cols["display"] = Column(g.name)
                if "$ref" in subs:
                    cols["$ref"] = url_of("/Groups/", gm.group_id)
                return rows, cols

            return Translator(USER, columns, User.id, ScimValue, special, {"groups": Relation(groups)})
        columns = {
            "id": Column(Group.id, case_exact=True),
            "externalid": Column(Group.external_id, case_exact=True),
            "displayname": Column(Group.name),
            "meta.created": Column(Group.created_at, "datetime"),
            "meta.lastmodified": Column(func.coalesce(Group.updated_at, Group.created_at), "datetime"),
        }

        def members(subs: set[str]):
            """A group's members: GroupMember rows (joined to the user for ``display``); all users."""
            gm = aliased(GroupMember)
            rows = select(gm.group_id).where(gm.group_id == Group.id)
            cols = {"value": Column(gm.user_id, case_exact=True), "type": Column(literal("User", String))}
            if "display" in subs:
                u = aliased(User)
                rows = rows.join(u, u.id == gm.user_id)
                cols["display"] = Column(u.name)
            if "$ref" in subs:
                cols["$ref"] = url_of("/Users/", gm.user_id)
            return rows, cols

        return Translator(GROUP, columns, Group.id, None, special, {"members": Relation(members)})

    # -- bulk (RFC 7644 §3.7)
    def bulk(self, caller: Caller, body: dict) -> ScimResponse:
        """Run the operations one by one through ``dispatch`` (the same checks, audit events and errors as single
        requests), each in its own transaction. ``bulkId:x`` in a path or anywhere in ``data`` becomes the id of
        the resource that the POST with ``bulkId`` x created; an operation runs after those it refers to, and
        a cycle refuses the whole request before anything is written."""
        schemas = body.get("schemas")
        if not isinstance(schemas, list) or BULK_REQUEST not in schemas:
            raise E.InvalidSyntax(f"'schemas' must be [{BULK_REQUEST}]")
        ops = body.get("Operations")
        if not isinstance(ops, list) or not ops:
            raise E.InvalidSyntax("'Operations' must be a non-empty list")
        if len(ops) > MAX_OPERATIONS:
            raise E.BulkTooMany(f"The bulk request has {len(ops)} operations; maxOperations is {MAX_OPERATIONS}.")
        fail_on = body.get("failOnErrors")
        if fail_on is not None and (isinstance(fail_on, bool) or not isinstance(fail_on, int) or fail_on < 1):
            raise E.InvalidValue("failOnErrors must be a positive integer")
        defined: dict[str, int] = {}
        for i, op in enumerate(ops):
            if not isinstance(op, dict):
                raise E.InvalidSyntax(f"Operations[{i}] must be an object")
            bid = op.get("bulkId")
            if bid is None:
                continue
            if not isinstance(bid, str) or not BULK_ID_RE.match(bid):
                raise E.InvalidValue(f"Operations[{i}].bulkId: 1-100 letters, digits, '.', '_', '~' or '-'")
            if bid in defined:
                raise E.InvalidSyntax(f"Operations[{i}].bulkId {bid!r} is used twice")
            if str(op.get("method", "")).upper() == "POST":
                defined[bid] = i
        deps = [_bulk_refs(op.get("path")) | _bulk_refs(op.get("data")) for op in ops]
        order = _bulk_order(ops, deps, defined)
        created: dict[str, str | None] = {}  # bulkId → id (None: its operation failed)
        results: list[dict] = []
        errors = 0
        for i in order:
            result = self._bulk_one(caller, ops[i], deps[i], defined, created)
            results.append(result)
            if not result["status"].startswith("2"):
                errors += 1
                if fail_on is not None and errors >= fail_on:
                    break
        self.hub.audit.record("scim.bulk", workspace_id=caller.workspace_id, actor_email=caller.actor,
                              data={"operations": len(ops), "done": len(results), "errors": errors})
        return ScimResponse(200, {"schemas": [BULK_RESPONSE], "Operations": results})

    def _bulk_one(self, caller: Caller, op: dict, refs: set[str], defined: dict[str, int],
                  created: dict[str, str | None]) -> dict:
        method = str(op.get("method", "")).upper()
        # echoed only when it looks like a method: anything else (a NUL, an unpaired surrogate) is not repeated
        out: dict = {"method": method if re.fullmatch(r"[A-Z]{1,16}", method) else None}
        bid = op.get("bulkId")
        if bid is not None:
            out["bulkId"] = bid
        try:
            if method not in BULK_METHODS:
                raise E.InvalidSyntax("method must be POST, PUT, PATCH or DELETE")
            if method == "POST" and bid is None:
                raise E.InvalidSyntax("bulkId is required with POST")
            path = op.get("path")
            if not isinstance(path, str) or not path.startswith("/"):
                raise E.InvalidSyntax("path must be a resource path such as /Users or /Users/{id}")
            for ref in refs:
                if ref not in defined:
                    raise E.InvalidValue(f"bulkId {ref!r} is not defined by a POST of this request")
                if created.get(ref) is None:
                    raise E.InvalidValue(f"the operation with bulkId {ref!r} did not succeed")
            ids = {k: v for k, v in created.items() if v is not None}
            path = _bulk_replace(path, ids)
            parts = [p for p in path.split("?")[0].split("/") if p]
            if not parts or parts[0] not in ("Users", "Groups") or len(parts) != (1 if method == "POST" else 2) \
                    or (len(parts) == 2 and parts[1] == ".search"):
                raise E.InvalidSyntax(f"path {path[:100]!r} is not valid for {method}")
            headers = {"content-type": "application/scim+json"}
            if isinstance(op.get("version"), str):
                headers["if-match"] = op["version"]
            data = op.get("data")
            raw = b""
            if method != "DELETE":
                if not isinstance(data, dict):
                    raise E.InvalidSyntax("data must be an object")
                raw = json.dumps(_bulk_replace(data, ids)).encode()
            resp = self.dispatch(caller, ScimRequest(method=method, path=path, headers=headers, body=raw))
        except E.ScimError as exc:
            if bid is not None:
                created[bid] = None
            out["status"] = str(exc.status)
            out["response"] = exc.to_error()
            return out
        out["status"] = str(resp.status)
        if resp.body is not None and isinstance(resp.body.get("meta"), dict):
            out["location"] = resp.body["meta"].get("location")
            if method == "POST" and bid is not None:
                created[bid] = resp.body.get("id")
        elif method == "DELETE":
            out["location"] = f"{self.base(caller.workspace_slug)}{path}"
        if resp.headers.get("ETag"):
            out["version"] = resp.headers["ETag"]
        return out

    # -- list / search
    @staticmethod
    def _search_query(body: dict) -> dict:
        """A SearchRequest body (RFC 7644 §3.4.3) as the query parameters of a GET."""
        schemas = body.get("schemas")
        if isinstance(schemas, list) and schemas and SEARCH_SCHEMA not in schemas:
            raise E.InvalidSyntax(f"'schemas' must be [{SEARCH_SCHEMA}]")
        query = {}
        for k in ("filter", "startIndex", "count", "sortBy", "sortOrder", "attributes", "excludedAttributes"):
            if body.get(k) is not None:
                v = body[k]
                if isinstance(v, dict) or (isinstance(v, list) and any(isinstance(i, dict | list) for i in v)):
                    raise E.InvalidValue(f"{k} must be a string")
                query[k] = ",".join(map(str, v)) if isinstance(v, list) else str(v)
        return query

    def search(self, caller: Caller, rt: ResourceType, body: dict) -> ScimResponse:
        return self.list(caller, rt, self._search_query(body))

    def search_all(self, caller: Caller, body: dict) -> ScimResponse:
        """``POST /.search``: Users and Groups as one result set. The filter is translated per resource type: a
        comparison on an attribute that a type's schemas lack is false for that type's resources (as for any
        absent value), and an attribute that no type knows is ``invalidFilter``. One ``UNION ALL`` of (type,
        id, sort key) pages the combined set: by ``sortBy`` (resources without the attribute last when
        ascending, first when descending: RFC 7644 §3.4.2.3), then Users before Groups, then id;
        ``totalResults`` is the sum of both counts."""
        q = {k.lower(): v for k, v in self._search_query(body).items()}
        start = min(max(self._int_param(q, "startindex", 1), 1), MAX_START)
        count = min(max(self._int_param(q, "count", DEFAULT_COUNT), 0), MAX_RESULTS)
        attributes = _split_attr_list(q.get("attributes"))
        excluded = _split_attr_list(q.get("excludedattributes"))
        node = parse_filter(q["filter"]) if q.get("filter") not in (None, "") else None
        parts, unknown = [], []
        for i, (rt, model) in enumerate(((USER, User), (GROUP, Group))):
            tr = self._translator(rt, caller)
            conds = [model.workspace_id == caller.workspace_id]  # outside the parsed filter, always
            if caller.cached:
                conds.append(self._still_valid(caller))
            if node is not None:
                tr.unknown = set()
                conds.append(tr.condition(node))
                unknown.append(tr.unknown)
            key = tr.order_column(q["sortby"]) if q.get("sortby") else None
            parts.append((i, rt, model, conds, key))
        nowhere = set.intersection(*unknown) if unknown else set()
        if nowhere:
            raise E.InvalidFilter(f"unknown attribute {sorted(nowhere)[0][:100]!r}")
        sort = bool(q.get("sortby"))
        if sort and all(p[4] is None for p in parts):
            raise E.InvalidValue(f"cannot sort by {q['sortby'][:100]!r}")
        branches = [select(literal_column(str(i)).label("t"), model.id.label("id"),
                           (key if key is not None else null()).label("k")).where(*conds)
                    for i, _rt, model, conds, key in parts]
        u = (union_all(*branches) if len(branches) > 1 else branches[0]).subquery()
        order = []
        if sort:
            descending = str(q.get("sortorder", "ascending")).lower() == "descending"
            order.append(u.c.k.desc().nulls_first() if descending else u.c.k.asc().nulls_last())
        order += [u.c.t, u.c.id]
        with self._db() as db:
            picked = list(db.execute(select(u.c.t, u.c.id).order_by(*order).offset(start - 1).limit(count))) \
                if count else []
            total = sum(db.scalar(select(func.count()).select_from(model).where(*conds))
                        for _i, _rt, model, conds, _key in parts)
            if total == 0:
                self.recheck(caller)
            rendered: dict[tuple[int, str], dict] = {}
            for i, rt, model, _conds, _key in parts:
                ids = [rid for t, rid in picked if t == i]
                if not ids:
                    continue
                rows = list(db.scalars(select(model).where(model.id.in_(ids))))
                want = rt is USER or not _excludes(excluded, attributes, "members")
                for row, b in zip(rows, self._render_many(db, caller, rt, rows, want_members=want), strict=True):
                    rendered[(i, row.id)] = project(b, rt, attributes, excluded)
        resources = [rendered[(t, rid)] for t, rid in picked if (t, rid) in rendered]
        return ScimResponse(200, {"schemas": [LIST_SCHEMA], "totalResults": total, "startIndex": start,
                                  "itemsPerPage": len(resources), "Resources": resources})

    @staticmethod
    def _int_param(query: dict, name: str, default: int) -> int:
        raw = query.get(name)
        if raw is None or raw == "":
            return default
        raw = str(raw).strip()
        if len(raw) > 20 or not raw.lstrip("-").isdigit():
            raise E.InvalidValue(f"{name} must be an integer")
        return int(raw)

    def list(self, caller: Caller, rt: ResourceType, query: dict) -> ScimResponse:
        q = {k.lower(): v for k, v in query.items()}
        start = min(max(self._int_param(q, "startindex", 1), 1), MAX_START)
        count = min(max(self._int_param(q, "count", DEFAULT_COUNT), 0), MAX_RESULTS)
        attributes = _split_attr_list(q.get("attributes"))
        excluded = _split_attr_list(q.get("excludedattributes"))
        if rt is USER and start == 1 and count and not q.get("sortby") and q.get("filter"):
            bodies = self._lookup(caller, parse_filter(q["filter"]), count)
            if bodies is not None:
                resources = [project(b, USER, attributes, excluded) for b in bodies]
                return ScimResponse(200, {"schemas": [LIST_SCHEMA], "totalResults": len(resources), "startIndex": 1,
                                          "itemsPerPage": len(resources), "Resources": resources})
        tr = self._translator(rt, caller)
        model = User if rt is USER else Group
        conds = [model.workspace_id == caller.workspace_id]  # outside the parsed filter, always
        if q.get("filter") not in (None, ""):
            conds.append(tr.condition(parse_filter(q["filter"])))
        if caller.cached:
            conds.append(self._still_valid(caller))
        order = [model.id]
        if q.get("sortby"):
            col = tr.order_column(q["sortby"])
            if col is None:
                raise E.InvalidValue(f"cannot sort by {q['sortby'][:100]!r}")
            direction = desc if str(q.get("sortorder", "ascending")).lower() == "descending" else asc
            order = [direction(col), model.id]
        with self._db() as db:
            # Deferred join: the page's ids come from the (workspace_id, id) index alone, and only those 100 rows
            # are read whole; a plain OFFSET reads (and joins) every skipped row.
            page = select(model.id).where(*conds).order_by(*order).offset(start - 1).limit(count)
            if rt is USER:  # Core, and each user's groups in the same statement: one round trip for a lookup
                bodies = self._user_bodies(db, caller, self.user_statement(model.id.in_(page), order)) if count else []
                found = len(bodies)
            else:
                rows = list(db.scalars(select(model).where(model.id.in_(page)).order_by(*order))) if count else []
                want_members = not _excludes(excluded, attributes, "members")
                bodies = self._render_many(db, caller, rt, rows, want_members=want_members)
                found = len(rows)
            if start == 1 and found < count:
                total = found  # the whole result is on this page (a userName lookup): no COUNT needed
            else:
                total = db.scalar(select(func.count()).select_from(model).where(*conds))
            if total == 0:
                self.recheck(caller)  # nothing found: perhaps because the cached token was revoked
        resources = [project(b, rt, attributes, excluded) for b in bodies]
        return ScimResponse(200, {"schemas": [LIST_SCHEMA], "totalResults": total, "startIndex": start,
                                  "itemsPerPage": len(resources), "Resources": resources})

    # -- the lookup fast path: userName / externalId / id eq "…" (what Okta and Azure AD send before every write)
    _LOOKUP_KEYS = {"username": "folded", "externalid": "exact", "id": "exact"}
    _lookup_statements: dict[str, object] = {}

    @classmethod
    def _lookup_statement(cls, key: str):
        """The whole lookup as one prebuilt statement with bound parameters (built once per process: no SQL
        expression building, cache-key computation or compilation per request). The same conditions as the
        translator's ``eq`` on that column, the caller's workspace, and the token re-check of ``_still_valid``."""
        stmt = cls._lookup_statements.get(key)
        if stmt is None:
            col = {"externalid": User.external_id, "id": User.id}.get(key)
            valid = exists(select(ScimToken.id).join(Workspace, Workspace.id == ScimToken.workspace_id).where(
                ScimToken.id == bindparam("tid"), ScimToken.revoked_at.is_(None),
                ScimToken.workspace_id == bindparam("ws"), Workspace.slug == bindparam("slug"),
                Workspace.plan == "enterprise"))
            match = col == bindparam("v") if col is not None else or_(  # userName: the username, else the address
                User.username_normalized == bindparam("v"),
                and_(User.username_normalized.is_(None), User.email_normalized == bindparam("v")))
            page = (select(User.id).where(User.workspace_id == bindparam("ws"), match, valid)
                    .order_by(User.id).limit(bindparam("lim", type_=Integer)))
            stmt = cls._lookup_statements[key] = cls.user_statement(User.id.in_(page), [User.id])
        return stmt

    def _lookup(self, caller: Caller, node, count: int) -> list[dict] | None:
        """The rendered users of a single ``eq`` on userName, externalId or id, when the whole result fits on
        the first page; None for any other filter (the translator serves it)."""
        if not (isinstance(node, Compare) and node.op == "eq" and node.path.sub is None
                and (node.path.uri is None or node.path.uri.lower() == USER.schema.lower())
                and node.path.attr.lower() in self._LOOKUP_KEYS and isinstance(node.value, str)
                and len(node.value) <= 1024):
            return None
        key = node.path.attr.lower()
        value = fold(node.value) if self._LOOKUP_KEYS[key] == "folded" else node.value
        params = {"ws": caller.workspace_id, "v": value, "tid": caller.token_id, "slug": caller.workspace_slug,
                  "lim": count}
        with self._db() as db:
            bodies = self._user_bodies(db, caller, self._lookup_statement(key), params)
            if not bodies:
                self.recheck(caller)  # nothing found: perhaps because the cached token was revoked
        return bodies if len(bodies) < count else None  # a full page: totalResults needs the COUNT

    # -- rendering
    _USER_COLUMNS = (User.id, User.email, User.username, User.external_id, User.display_name, User.given_name,
                     User.family_name, User.active, User.created_at, User.updated_at, User.scim)

    @classmethod
    def user_statement(cls, where, order: list):
        return (select(*cls._USER_COLUMNS, Group.id.label("gid"), Group.name.label("gname"))
                .outerjoin(GroupMember, GroupMember.user_id == User.id)
                .outerjoin(Group, Group.id == GroupMember.group_id)
                .where(where).order_by(*order, Group.name))

    def _user_bodies(self, db, caller: Caller, stmt, params: dict | None = None) -> list[dict]:
        """Rendered users of a ``user_statement``, read with their groups (outer joins, one row per membership)
        in one Core statement: no ORM identity map, no second query for the groups."""
        base = self.base(caller.workspace_slug)
        out: list[dict] = []
        last, groups = None, []
        for row in db.connection().execute(stmt, params or {}):  # Core: no ORM execution layer
            if last is None or row.id != last.id:
                if last is not None:
                    out.append(render_user(last, groups, base))
                last, groups = row, []
            if row.gid is not None:
                groups.append({"value": row.gid, "$ref": f"{base}/Groups/{row.gid}", "display": row.gname,
                               "type": "direct"})
        if last is not None:
            out.append(render_user(last, groups, base))
        return out

    def _render_many(self, db, caller: Caller, rt: ResourceType, rows: list, want_members: bool = True) -> list[dict]:
        base = self.base(caller.workspace_slug)
        if not rows:
            return []
        ids = [r.id for r in rows]
        if rt is USER:
            groups: dict[str, list] = {}
            for uid, gid, gname in db.execute(
                select(GroupMember.user_id, Group.id, Group.name).join(Group, Group.id == GroupMember.group_id)
                .where(GroupMember.user_id.in_(ids)).order_by(Group.name)
            ):
                groups.setdefault(uid, []).append({"value": gid, "$ref": f"{base}/Groups/{gid}", "display": gname,
                                                   "type": "direct"})
            return [render_user(u, groups.get(u.id, []), base) for u in rows]
        members: dict[str, list] = {}
        if want_members:
            for gid, uid, uname in db.execute(
                select(GroupMember.group_id, GroupMember.user_id, User.name)
                .join(User, User.id == GroupMember.user_id).where(GroupMember.group_id.in_(ids))
                .order_by(GroupMember.user_id)
            ):
                member = {"value": uid, "$ref": f"{base}/Users/{uid}"}
                if uname:
                    member["display"] = uname
                member["type"] = "User"
                members.setdefault(gid, []).append(member)
        return [render_group(g, members.get(g.id, []), base, with_members=want_members) for g in rows]

    def _load(self, db, caller: Caller, rt: ResourceType, rid: str, lock: bool = False):
        if not ID_RE.fullmatch(rid or ""):
            raise E.NotFound(f"{rt.name} {rid[:64]!r} not found.")
        model = User if rt is USER else Group
        stmt = select(model).where(model.id == rid, model.workspace_id == caller.workspace_id)
        if lock:
            stmt = stmt.with_for_update(of=model)
        row = db.scalar(stmt)
        if row is None:
            raise E.NotFound(f"{rt.name} {rid[:64]!r} not found.")
        return row

    def _respond(self, status: int, rt: ResourceType, body: dict, query: dict, extra: dict | None = None
                 ) -> ScimResponse:
        q = {k.lower(): v for k, v in (query or {}).items()}
        shown = project(body, rt, _split_attr_list(q.get("attributes")), _split_attr_list(q.get("excludedattributes")))
        headers = {"ETag": body["meta"]["version"], **(extra or {})}
        return ScimResponse(status, shown, headers)

    # -- get
    def get(self, caller: Caller, rt: ResourceType, rid: str, req: ScimRequest) -> ScimResponse:
        q = {k.lower(): v for k, v in req.query.items()}
        excluded = _split_attr_list(q.get("excludedattributes"))
        with self._db() as db:
            row = self._load(db, caller, rt, rid)
            want = rt is USER or not _excludes(excluded, _split_attr_list(q.get("attributes")), "members")
            body = self._render_many(db, caller, rt, [row], want_members=want)[0]
        inm = req.headers.get("if-none-match")
        if inm and _etag_matches(inm, body["meta"]["version"]):
            return ScimResponse(304, None, {"ETag": body["meta"]["version"]})
        return self._respond(200, rt, body, req.query)

    # -- writes
    def create(self, caller: Caller, rt: ResourceType, body: dict, query: dict) -> ScimResponse:
        check_schemas(body, rt)
        data = clean_resource(body, rt)
        data.pop("id", None)  # read-only: ignored on create (RFC 7643 §2.2)
        if rt is USER:
            return self._create_user(caller, data, query)
        return self._create_group(caller, data, query)

    def replace(self, caller: Caller, rt: ResourceType, rid: str, body: dict, req: ScimRequest) -> ScimResponse:
        check_schemas(body, rt)
        data = clean_resource(body, rt)
        if "id" in data and data.pop("id") != rid:
            raise E.Mutability("id is read-only and must match the resource")
        return self._write(caller, rt, rid, req, lambda current: data)

    def patch(self, caller: Caller, rt: ResourceType, rid: str, body: dict, req: ScimRequest) -> ScimResponse:
        schemas = body.get("schemas")
        if not isinstance(schemas, list) or PATCH_SCHEMA not in schemas:
            raise E.InvalidSyntax(f"'schemas' must be [{PATCH_SCHEMA}]")

        def change(current: dict) -> dict:
            doc = clean_resource(current, rt, keep_read_only_subs=True)  # members[display eq "…"] can match
            doc.pop("id", None)
            result = Patcher(rt, doc).apply(body)
            return clean_resource({**result, "schemas": current["schemas"]}, rt)

        return self._write(caller, rt, rid, req, change)

    def _write(self, caller: Caller, rt: ResourceType, rid: str, req: ScimRequest, change) -> ScimResponse:
        """PUT and PATCH. A user's deactivation is deprovisioning (``idp.lifecycle``): the request is checked
        first (a refused one ends nothing), every session is ended, then the change is written."""
        actor = caller.as_actor()

        def attempt(final: bool):
            with self._db() as db:
                row = self._load(db, caller, rt, rid, lock=True)
                current = self._render_many(db, caller, rt, [row])[0]
                im = req.headers.get("if-match")
                if im and not _etag_matches(im, current["meta"]["version"]):
                    raise E.PreconditionFailed()
                data = change(current)
                if rt is USER:
                    done = self._apply_user(db, actor, row, data)
                    if not final and data.get("active") is False:
                        return None  # deprovisioning: sessions end before anything is written
                    self._flush_unique(db, "userName")
                    self._index_user(db, row)
                else:
                    self._apply_group(db, caller, row, data, replace=True)
                    self._flush_unique(db, "displayName")
                    done = None
                new = self._render_many(db, caller, rt, [row])[0]
                self._commit(db, "userName" if rt is USER else "displayName")
                return current, new, done, row

        if rt is USER:
            out = attempt(final=False)
        else:  # the group's members (or its name) change: who lost an app assigned to it loses its grants now
            with self._access(caller, "scim", rid):
                out = attempt(final=False)
        ended = None
        if out is None:
            deprovisioned = self.hub.accounts.deprovision([(caller.workspace_id, rid)], "deprovisioned",
                                                          lambda: attempt(final=True))
            out, ended = deprovisioned.result, deprovisioned.sessions_ended
        current, new, done, row = out
        changed = _changed(current, new) + (["password"] if done is not None and done.password_set else [])
        if rt is USER:
            deactivated = done.deactivated
            verb = "deactivated" if deactivated else "updated"
            extra = {"sessions_ended": ended} if ended is not None else {}
            self.hub.accounts.record(actor, caller.workspace_id, verb, rid, changed=changed, **extra)
            if deactivated and is_privileged(row):
                self.hub.accounts.alert_admins(self._workspace(caller), actor, row, "deactivated")
        else:
            self.hub.audit.record("scim.group.updated", workspace_id=caller.workspace_id, actor_email=caller.actor,
                                  subject_id=rid, data={"changed": changed})
        return self._respond(200, rt, new, req.query)

    def _access(self, caller: Caller, why: str, group_id: str):
        """``idp.assignments``' watch over the members of a group being changed or deleted. An id that is not one
        (hostile bytes such as NUL, which PostgreSQL refuses in text) has no members: ``_load`` then answers 404."""
        members: list[str] = []
        if ID_RE.fullmatch(group_id or ""):
            with self.hub.db() as db:
                members = list(db.scalars(select(GroupMember.user_id).join(Group, Group.id == GroupMember.group_id)
                                          .where(Group.id == group_id, Group.workspace_id == caller.workspace_id)))
        return self.hub.app_access.watch(caller.workspace_id, why, members)

    def _workspace(self, caller: Caller) -> Workspace:
        with self.hub.db() as db:
            return db.get(Workspace, caller.workspace_id)

    def delete(self, caller: Caller, rt: ResourceType, rid: str, req: ScimRequest) -> ScimResponse:
        """A user's deletion is deprovisioning (``idp.lifecycle``): checked first, every session ended (the apps
        are told, the grants revoked), then the user deleted; a retry after a crash finishes the job."""
        actor = caller.as_actor()

        def attempt(final: bool):
            with self._db() as db:
                row = self._load(db, caller, rt, rid, lock=True)
                im = req.headers.get("if-match")
                if im:
                    current = self._render_many(db, caller, rt, [row])[0]
                    if not _etag_matches(im, current["meta"]["version"]):
                        raise E.PreconditionFailed()
                if rt is USER:
                    with scim_account_errors():
                        check_allowed(actor, row, {"deleted"})
                    if not final:
                        return row
                    db.execute(delete(ScimValue).where(ScimValue.owner_id == rid))
                    db.execute(delete(GroupMember).where(GroupMember.user_id == rid))
                    db.execute(delete(User).where(User.id == rid, User.workspace_id == caller.workspace_id))
                else:
                    db.execute(delete(GroupMember).where(GroupMember.group_id == rid))
                    db.execute(delete(Group).where(Group.id == rid, Group.workspace_id == caller.workspace_id))
                db.commit()
                return row

        if rt is GROUP:
            with self._access(caller, "scim", rid):
                attempt(final=True)
            self.hub.audit.record("scim.group.deleted", workspace_id=caller.workspace_id, actor_email=caller.actor,
                                  subject_id=rid, data={})
            return ScimResponse(204)
        attempt(final=False)
        done = self.hub.accounts.deprovision([(caller.workspace_id, rid)], "deprovisioned", lambda: attempt(final=True))
        self.hub.accounts.record(actor, caller.workspace_id, "deleted", rid, sessions_ended=done.sessions_ended)
        if is_privileged(done.result):
            self.hub.accounts.alert_admins(self._workspace(caller), actor, done.result, "deleted")
        return ScimResponse(204)

    # -- users
    def _create_user(self, caller: Caller, data: dict, query: dict) -> ScimResponse:
        actor = caller.as_actor()
        with self._db() as db:
            user = User(id=new_id(), workspace_id=caller.workspace_id, email="", email_normalized="", role="member",
                        active=True, created_at=utcnow())
            guards = None
            if db.connection().dialect.name == "postgresql" and not self.hub.audit.inline:
                # The checks that read the database are made by the create's one statement, before it writes:
                # a cached caller's token first (``_TOKEN_STILL_WRITABLE``), then the account service's "taken"
                # checks (``write(..., guards=)``).
                guards = []
                if caller.cached:
                    guards.append(Guard(_TOKEN_STILL_WRITABLE, _token_params(caller, name=True), _StaleCaller()))
            done = self._apply_user(db, actor, user, data, new=True, guards=guards)
            body = render_user(user, [], self.base(caller.workspace_slug))  # a new user is in no group
            changed = sorted(k for k in body if k not in ("schemas", "id", "meta", "groups"))
            rows = self._value_rows(user)
            along = []
            if rows:
                along.append((_VALUES_PART, {"v_" + c: [r[c] for r in rows] for c in _VALUE_COLUMNS})
                             if db.connection().dialect.name == "postgresql" else (_VALUES_ROW_PART, rows))
            # The user, its scim_values rows and its audit event together: on PostgreSQL one statement (the
            # request's connection is in autocommit: no BEGIN and COMMIT round trips), else in the create's own
            # transaction, the event last (with inline sealing it locks the chain's head until the commit).
            record = (actor, "created", {"changed": changed + (["password"] if done.password_set else [])})
            try:  # the unique constraint decides (no SELECT first)
                with scim_account_errors():
                    self.hub.accounts.insert(db, user, along=along, record=record, guards=guards)  # not a flush
            except IntegrityError:
                db.rollback()
                raise E.Uniqueness("userName is already in use in this workspace") from None
            _CREATE_WROTE.set(True)
            self._commit(db, "userName")
        return self._respond(201, USER, body, query, {"Location": body["meta"]["location"]})

    def _apply_user(self, db, actor: Actor, user: User, data: dict, *, new: bool = False,
                    guards: list | None = None):
        """Set a user from cleaned SCIM data (a full replacement) through the account service, which holds the
        rules: ``role`` is never SCIM's, and an administrator's userName and password are not either."""
        username = data.get("userName")
        if not isinstance(username, str) or not username.strip():
            raise E.InvalidValue("userName is required")
        email = account_email(username, data.get("emails"))
        name = dict(data.get("name") or {})
        given, family = _clip(name.pop("givenName", None), 200), _clip(name.pop("familyName", None), 200)
        display = _clip(data.get("displayName"), 200)
        rest = {k: v for k, v in data.items() if k not in USER_COLUMNS_ATTRS and k != "name"}
        if name:
            rest["name"] = name
        password = data.get("password")
        if password is not None and not isinstance(password, str):
            raise E.InvalidValue("password must be a string")
        with scim_account_errors():
            return self.hub.accounts.write(
                db, actor, user, new=new, email=email, username=username,
                name=_clip(display or name.get("formatted") or " ".join(p for p in (given, family) if p)
                           or user.name or "", 200),
                active=bool(data["active"]) if "active" in data else KEEP, password=password,
                profile={"external_id": data.get("externalId"), "display_name": display, "given_name": given,
                         "family_name": family, "scim": rest or None}, **({"guards": guards} if new else {}))

    def _index_user(self, db, user: User, new: bool = False) -> None:
        """Rewrite the user's ``scim_values`` rows (after the user's row is written): a Core DELETE and one Core
        INSERT of all the rows, in the session's transaction (no ORM objects, no RETURNING of ids nothing
        reads)."""
        conn = db.connection()
        if not new:
            conn.execute(_DELETE_VALUES, {"owner": user.id})
        rows = self._value_rows(user)
        if not rows:
            return
        if conn.dialect.name == "postgresql":
            conn.execute(_INSERT_VALUES_PG, {c: [r[c] for r in rows] for c in _VALUE_COLUMNS})
        else:
            conn.execute(_INSERT_VALUES, rows)

    @staticmethod
    def _value_rows(user: User) -> list[dict]:
        """The user's ``scim_values`` rows (what filters on multi-valued and extension attributes search)."""
        rows: list[dict] = []
        scim = user.scim or {}
        owner = user.id

        def add(attr: str, idx: int, sub: str, value) -> None:
            if value is None or isinstance(value, dict | list):
                return
            s = ("true" if value else "false") if isinstance(value, bool) else str(value)[:MAX_STRING]
            rows.append({"owner_id": owner, "attr": attr, "idx": idx, "sub": sub, "value": s,
                         "folded": fold(s)[:MAX_STRING]})

        def walk(attrs: tuple[Attr, ...], container: dict, prefix: str) -> None:
            for a in attrs:
                value = container.get(a.name)
                if value is None:
                    continue
                label = prefix + a.name
                if a.multi:
                    for i, e in enumerate(value):
                        if isinstance(e, dict):
                            for k, v in e.items():
                                add(label, i, k, v)
                        else:
                            add(label, i, "", e)
                elif isinstance(value, dict):
                    for k, v in value.items():
                        add(label, 0, k, v)
                else:
                    add(label, 0, "", value)

        walk(USER.attrs, scim, "")
        for uri, attrs in USER.extensions.items():
            walk(attrs, scim.get(uri) or {}, f"{uri}:")
        return rows

    # -- groups
    def _create_group(self, caller: Caller, data: dict, query: dict) -> ScimResponse:
        with self._db() as db:
            group = Group(workspace_id=caller.workspace_id, created_at=utcnow())
            self._apply_group(db, caller, group, data, replace=True)
            self._flush_unique(db, "displayName")
            body = self._render_many(db, caller, GROUP, [group])[0]
            self.hub.audit.record("scim.group.created", workspace_id=caller.workspace_id, actor_email=caller.actor,
                                  subject_id=group.id, data={"changed": sorted(k for k in body if k not in
                                                                                ("schemas", "id", "meta")),
                                                             "members": len(body.get("members", []))},
                                  connection=db.connection())
            self._commit(db, "displayName")
        return self._respond(201, GROUP, body, query, {"Location": body["meta"]["location"]})

    def _apply_group(self, db, caller: Caller, group: Group, data: dict, *, replace: bool) -> None:
        name = data.get("displayName")
        if not isinstance(name, str) or not name.strip():
            raise E.InvalidValue("displayName is required")
        if len(name) > 200:
            raise E.InvalidValue("displayName: at most 200 characters")
        taken = db.scalar(select(Group.id).where(Group.workspace_id == caller.workspace_id, Group.name == name))
        if taken is not None and taken != group.id:
            raise E.Uniqueness("displayName is already in use in this workspace")
        group.name = name
        group.external_id = data.get("externalId")
        group.updated_at = utcnow()
        if group not in db:
            db.add(group)
        self._flush_unique(db, "displayName")
        wanted: set[str] = set()
        for i, m in enumerate(data.get("members") or []):
            value = m.get("value") if isinstance(m, dict) else None
            if not isinstance(value, str) or not value:
                raise E.InvalidValue(f"members[{i}].value is required")
            if isinstance(m.get("type"), str) and m["type"].lower() == "group":
                raise E.InvalidValue("nested groups are not supported")
            wanted.add(value)
        if wanted:
            found = set()
            ids = list(wanted)
            for chunk in range(0, len(ids), 500):
                found |= set(db.scalars(select(User.id).where(User.workspace_id == caller.workspace_id,
                                                             User.id.in_(ids[chunk:chunk + 500]))))
            missing = wanted - found
            if missing:
                raise E.InvalidValue(f"members: no user {sorted(missing)[0][:64]!r} in this workspace")
        have = set(db.scalars(select(GroupMember.user_id).where(GroupMember.group_id == group.id)))
        for uid in wanted - have:
            db.add(GroupMember(group_id=group.id, user_id=uid))
        gone = have - wanted
        if gone:
            db.execute(delete(GroupMember).where(GroupMember.group_id == group.id,
                                                 GroupMember.user_id.in_(list(gone))))

    # -- transactions
    @staticmethod
    def _flush_unique(db, attr: str) -> None:
        try:
            db.flush()
        except IntegrityError:
            db.rollback()
            raise E.Uniqueness(f"{attr} is already in use in this workspace") from None

    @staticmethod
    def _commit(db, attr: str) -> None:
        try:
            db.commit()
        except IntegrityError:
            db.rollback()
            raise E.Uniqueness(f"{attr} is already in use in this workspace") from None


@contextmanager
def scim_account_errors():
    """``idp.lifecycle``'s refusals as SCIM errors (RFC 7644 §3.12): the attribute named as SCIM names it."""
    try:
        yield
    except AccountError as exc:
        attr = {"email": "userName"}.get(exc.field or "", exc.field)
        detail = exc.message if not attr or exc.message.startswith(attr) else f"{attr}: {exc.message}"
        if exc.kind == "invalid":
            raise E.InvalidValue(detail) from None
        if exc.kind == "uniqueness":
            raise E.Uniqueness("userName is already in use in this workspace" if "already in use" in exc.message
                               else detail) from None
        if exc.kind == "mutability" or exc.field in PROTECTED:
            raise E.Mutability(detail) from None
        raise E.Forbidden(detail) from None


def _bulk_refs(value) -> set[str]:
    """The bulkIds that a path or a data value refers to (``bulkId:x`` strings, and path segments)."""
    out: set[str] = set()
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if "bulkId:" in v:
                for seg in v.split("/"):
                    if seg.startswith("bulkId:"):
                        out.add(seg.removeprefix("bulkId:").split("?")[0])
        elif isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return out


def _bulk_replace(value, ids: dict[str, str]):
    if isinstance(value, str):
        if "bulkId:" not in value:
            return value
        return "/".join(ids.get(seg.removeprefix("bulkId:"), seg) if seg.startswith("bulkId:") else seg
                        for seg in value.split("/"))
    if isinstance(value, dict):
        return {k: _bulk_replace(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [_bulk_replace(v, ids) for v in value]
    return value


def _bulk_order(ops: list, deps: list[set[str]], defined: dict[str, int]) -> list[int]:
    """Request order, except that an operation runs after the POSTs whose bulkIds it refers to. Raises
    ``CircularReference`` naming the cycle (nothing has been written yet). Iterative: a chain of
    ``MAX_OPERATIONS`` references (each user's manager the previous one) needs no deep recursion."""
    order: list[int] = []
    state: dict[int, int] = {}  # 1: on the current path, 2: placed

    def name(j: int) -> str:
        return str(ops[j].get("bulkId") or f"Operations[{j}]")

    for root in range(len(ops)):
        if state.get(root) == 2:
            continue
        state[root] = 1
        path = [root]
        stack = [iter(sorted(deps[root]))]
        while stack:
            i = path[-1]
            for ref in stack[-1]:
                j = defined.get(ref)
                if j is None or state.get(j) == 2:
                    continue
                if j == i:
                    raise E.CircularReference(f"Operation {name(i)!r} refers to its own bulkId. Nothing was changed.")
                if state.get(j) == 1:
                    cycle = path[path.index(j):] + [j]
                    raise E.CircularReference("Circular bulkId references: " + " → ".join(map(name, cycle))
                                              + ". Nothing was changed.")
                state[j] = 1
                path.append(j)
                stack.append(iter(sorted(deps[j])))
                break
            else:
                stack.pop()
                state[path.pop()] = 2
                order.append(i)
    return order


def _clip(value, n: int):
    return value[:n] if isinstance(value, str) else value


def _excludes(excluded: list[str], attributes: list[str], name: str) -> bool:
    if attributes:
        return not any(a.lower() == name or a.lower().startswith(name + ".") for a in attributes)
    return any(a.lower() == name for a in excluded)


def _changed(old: dict, new: dict) -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        if k in ("meta", "schemas"):
            continue
        if k == ENTERPRISE_SCHEMA:
            a, b = old.get(k) or {}, new.get(k) or {}
            out += [f"{k}:{s}" for s in sorted(set(a) | set(b)) if a.get(s) != b.get(s)]
        elif old.get(k) != new.get(k):
            out.append(k)
    return out


def account_email(username: str, emails) -> str | None:
    """The account's e-mail address from a SCIM user: ``emails`` (the primary one, else the first with a value),
    else the ``userName`` when it is an address; None when neither gives one — the user then signs in with their
    username and gets no mail (invitations, resets, alerts). An address in ``emails`` is held to the rules of
    ``idp.accounts.parse_email``: it becomes a sign-in identifier."""
    chosen = None
    if isinstance(emails, list):
        values = [e for e in emails if isinstance(e, dict) and isinstance(e.get("value"), str) and e["value"].strip()]
        chosen = next((e for e in values if e.get("primary") is True), values[0] if values else None)
    if chosen is not None:
        try:
            return clean_email(chosen["value"])
        except InvalidEmail as exc:
            raise E.InvalidValue(f"emails: {exc}") from None
    try:
        return clean_email(username)
    except InvalidEmail:
        return None


def render_user(u: User, groups: list[dict], base: str) -> dict:
    scim = dict(u.scim or {})
    name = dict(scim.pop("name", None) or {})
    if u.given_name:
        name["givenName"] = u.given_name
    if u.family_name:
        name["familyName"] = u.family_name
    ext = scim.pop(ENTERPRISE_SCHEMA, None)
    body: dict = {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"] + ([ENTERPRISE_SCHEMA] if ext else []),
                  "id": u.id}
    if u.external_id:
        body["externalId"] = u.external_id
    body["userName"] = u.username or u.email
    if name:
        body["name"] = name
    if u.display_name:
        body["displayName"] = u.display_name
    body["active"] = bool(u.active)
    body.update(scim)
    if ext:
        body[ENTERPRISE_SCHEMA] = ext
    if groups:
        body["groups"] = groups
    body["meta"] = {"resourceType": "User", "created": iso(u.created_at), "lastModified": iso(u.updated_at),
                    "location": f"{base}/Users/{u.id}"}
    body["meta"]["version"] = version_of(body)
    return body


def render_group(g: Group, members: list[dict], base: str, with_members: bool = True) -> dict:
    body: dict = {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "id": g.id}
    if g.external_id:
        body["externalId"] = g.external_id
    body["displayName"] = g.name
    if members:
        body["members"] = members
    body["meta"] = {"resourceType": "Group", "created": iso(g.created_at),
                    "lastModified": iso(g.updated_at or g.created_at), "location": f"{base}/Groups/{g.id}"}
    # From the group's own columns (every write sets updated_at), so that listings without members agree.
    stamp = f"{g.id}|{g.name}|{g.external_id}|{iso(g.updated_at or g.created_at)}"
    body["meta"]["version"] = f'W/"{hashlib.sha256(stamp.encode()).hexdigest()[:20]}"'
    return body
