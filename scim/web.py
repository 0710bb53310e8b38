"""The SCIM blueprint: Flask request → ``ScimRequest``, ``ScimResponse`` → Flask response. Nothing else.

Bearer tokens, not cookies: no CSRF check (``check_csrf`` is per view and deliberately not called here)."""

from __future__ import annotations

import json
import logging

from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.routing import PathConverter

from scim import errors as E
from scim.service import ScimRequest, ScimResponse, ScimService, too_large

log = logging.getLogger("idhub.scim")
bp = Blueprint("scim", __name__, url_prefix="/w/<ws_slug>/scim/v2")
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
CONTENT_TYPE = "application/scim+json; charset=utf-8"


class _AnyPath(PathConverter):
    """``path`` that also matches line breaks (``/Users/{id}%0A``), so that such a path gets a SCIM 404 from the
    service rather than the app's HTML one."""

    regex = r"[^/][\s\S]*?"


@bp.record_once
def _register_converter(state) -> None:  # before the routes below are added to the app's URL map
    state.app.url_map.converters.setdefault("scimpath", _AnyPath)


def _service() -> ScimService:
    svc = current_app.extensions.get("idhub.scim")
    if svc is None:
        hub = current_app.extensions["idhub"]
        svc = current_app.extensions["idhub.scim"] = ScimService(hub, max_body=hub.settings.scim_max_body)
    return svc


def _to_flask(resp: ScimResponse) -> Response:
    body = "" if resp.body is None else json.dumps(resp.body, ensure_ascii=False)
    out = Response(body, status=resp.status, content_type=CONTENT_TYPE if resp.body is not None else None)
    for k, v in resp.headers.items():
        out.headers[k] = v
    out.headers["Cache-Control"] = "no-store"
    return out


def _error(exc: E.ScimError) -> Response:
    return _to_flask(ScimResponse(exc.status, exc.to_error(), dict(exc.headers)))


@bp.before_request
def _limits():
    limit = _service().max_body  # IDHUB_SCIM_MAX_BODY: for SCIM only, instead of the app's 256 KiB (Flask >= 3.1)
    request.max_content_length = limit
    if request.content_length is not None and request.content_length > limit:
        return _error(too_large(limit))
    return None


@bp.route("", methods=METHODS, defaults={"path": ""}, strict_slashes=False)
@bp.route("/<scimpath:path>", methods=METHODS)
def endpoint(ws_slug: str, path: str):
    if request.method == "OPTIONS":
        return _to_flask(ScimResponse(204, None, {"Allow": ", ".join(METHODS)}))
    try:
        body = request.get_data(cache=False) if request.method in ("POST", "PUT", "PATCH") else b""
    except RequestEntityTooLarge:
        return _error(too_large(_service().max_body))
    method = "GET" if request.method == "HEAD" else request.method
    req = ScimRequest(
        method=method,
        path="/" + path,
        query={k: v for k, v in request.args.items()},
        headers={k.lower(): v for k, v in request.headers.items()},
        body=body,
    )
    return _to_flask(_service().handle(ws_slug, req))


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException):
    if exc.code == 413:
        return _error(E.PayloadTooLarge())
    err = E.ScimError(exc.description or exc.name)
    err.status = exc.code or 400
    return _error(err)


@bp.errorhandler(Exception)
def _unexpected(exc: Exception):
    from idp.outage import is_unavailable as _is_unavailable

    if _is_unavailable(exc):
        log.error("store unavailable", extra={"error": type(exc).__name__})
        return _error(E.Unavailable(headers={"Retry-After": "30"}))
    log.exception("unhandled SCIM error")
    return _error(E.InternalError())
