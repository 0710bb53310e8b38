"""The admin API blueprint (``{base}/api/v1``): bearer-token authentication, JSON in and out, size-bounded
bodies, errors as ``{"error": {"code", "message", "field"}}``. Routes come from ``admin.openapi.OPERATIONS``;
the work is ``admin.service.AdminService``'s."""

from __future__ import annotations

import json
import logging

from flask import Blueprint, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException

from admin.openapi import API_PREFIX, OPERATIONS, document, flask_rule
from admin.service import AdminError, AdminService
from admin.tokens import Principal, TokenService

log = logging.getLogger("idhub.admin")
bp = Blueprint("admin_api", __name__)
MAX_BODY = 64 * 1024
FAILURES_PER_MINUTE = 20


def admin_service() -> AdminService:
    ext = current_app.extensions
    if "idhub_admin" not in ext:
        from idp.crypto import derive_key

        hub = ext["idhub"]
        tokens = TokenService(hub.db, derive_key(hub.settings.secret_key, "admin-api-tokens"), clock=hub.clock,
                              keys=lambda: hub.keyring.hmac_keys("admin-api-tokens"))
        ext["idhub_admin"] = AdminService(hub, tokens)
    return ext["idhub_admin"]


def error(status: int, code: str, message: str, field: str | None = None, headers: dict | None = None):
    resp = jsonify({"error": {"code": code, "message": message, "field": field}})
    resp.status_code = status
    resp.headers["Cache-Control"] = "no-store"
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
              405: "method_not_allowed", 413: "too_large", 415: "unsupported_media_type", 429: "too_many_requests"}


def http_error(exc: HTTPException):
    """For ``idp.app``'s handlers: an HTTP error under /api/v1 in the API's own format."""
    code = exc.code or 500
    message = {413: f"the body is larger than {MAX_BODY // 1024} KiB", 404: "no such endpoint",
               405: "method not allowed here"}.get(code, exc.description or exc.name)
    headers = {"Allow": ", ".join(exc.valid_methods)} if code == 405 and getattr(exc, "valid_methods", None) else {}
    return error(code, HTTP_CODES.get(code, "error"), message, headers=headers)


def unexpected_error(error_id: str, unavailable: bool):
    if unavailable:
        return error(503, "unavailable", "idhub cannot reach its database or cache; nothing was changed",
                     headers={"Retry-After": "30"})
    return error(500, "internal_error", f"an unexpected error occurred; nothing was changed (error id {error_id})")


def is_api_path(path: str) -> bool:
    return path == API_PREFIX or path.startswith(API_PREFIX + "/")


@bp.before_request
def _authenticate():
    request.max_content_length = MAX_BODY
    if request.endpoint == "admin_api.openapi_json":
        return None
    from idp.web.common import current_client

    client = current_client()
    svc = admin_service()
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    result = svc.tokens.authenticate(token.strip() if scheme.lower() == "bearer" else None)
    if result.principal is None:
        if result.reason != "missing":
            # a client guessing tokens is slowed down, and cannot flood the audit log
            if not svc.hub.stores.throttle.hit(f"adminapi-fail:{client.ip}", FAILURES_PER_MINUTE, 60,
                                               svc.hub.clock()):
                return error(429, "too_many_requests", "too many failed attempts; wait a minute",
                             headers={"Retry-After": "60"})
            svc.hub.audit.record("admin.api.auth_failed", ip=client.ip, user_agent=client.user_agent or None,
                                 request_id=client.request_id, data={"reason": result.reason})
        return error(401, "unauthorized", {"missing": "send Authorization: Bearer <admin API token>",
                                           "expired": "this token has expired",
                                           "revoked": "this token was revoked"}.get(result.reason,
                                                                                     "invalid token"),
                     headers={"WWW-Authenticate": 'Bearer realm="idhub-admin"'})
    p = result.principal
    g.admin_principal = Principal(p.kind, p.name, p.operator, p.workspace_id, p.actor_id, ip=client.ip,
                                  user_agent=client.user_agent, request_id=client.request_id)
    return None


@bp.errorhandler(AdminError)
def _admin_error(exc: AdminError):
    resp = error(exc.status, exc.code, exc.message, exc.field)
    if exc.status == 422:  # every invalid field at once, the first also as field/message
        resp.set_data(json.dumps({"error": {**resp.get_json()["error"], "errors": exc.errors}}))
    return resp


def _json_body():
    if request.mimetype != "application/json":
        raise AdminError(400, "bad_request", "send a JSON body (Content-Type: application/json)")
    raw = request.get_data(cache=True)  # bounded by request.max_content_length (413 beyond it)
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise AdminError(400, "bad_request", "the body is not valid JSON") from None


def _ok(payload, status: int = 200):
    resp = jsonify(payload)
    resp.status_code = status
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _q(name: str):
    return request.args.get(name)


# ---- handlers, by operationId ------------------------------------------------------------------------------
def _handlers(svc: AdminService, p: Principal, kw: dict):
    ws = kw.get("ws")
    return {
        "listWorkspaces": lambda: svc.list_workspaces(p, limit=_q("limit"), offset=_q("offset")),
        "createWorkspace": lambda: svc.create_workspace(p, _json_body()),
        "getWorkspace": lambda: svc.get_workspace(p, ws),
        "getDashboard": lambda: svc.dashboard(p, ws),
        "listUsers": lambda: svc.list_users(p, ws, email=_q("email"), status=_q("status"), q=_q("q"),
                                            limit=_q("limit"), offset=_q("offset")),
        "createUser": lambda: svc.create_user(p, ws, _json_body()),
        "getUser": lambda: svc.get_user(p, ws, kw["user_id"]),
        "updateUser": lambda: svc.update_user(p, ws, kw["user_id"], _json_body()),
        "disableUser": lambda: svc.set_active(p, ws, kw["user_id"], False),
        "enableUser": lambda: svc.set_active(p, ws, kw["user_id"], True),
        "resetUserMfa": lambda: svc.reset_mfa(p, ws, kw["user_id"]),
        "endUserSessions": lambda: svc.end_sessions(p, ws, kw["user_id"]),
        "listUserSessions": lambda: svc.user_sessions(p, ws, kw["user_id"]),
        "endUserSession": lambda: svc.end_user_session(p, ws, kw["user_id"], kw["session_id"]),
        "sendUserPasswordReset": lambda: svc.send_password_reset(p, ws, kw["user_id"]),
        "resendUserInvitation": lambda: svc.resend_invitation(p, ws, kw["user_id"]),
        "revokeUserInvitation": lambda: svc.revoke_invitation(p, ws, kw["user_id"]),
        "listGroups": lambda: svc.list_groups(p, ws, limit=_q("limit"), offset=_q("offset")),
        "createGroup": lambda: svc.create_group(p, ws, _json_body()),
        "getGroup": lambda: svc.get_group(p, ws, kw["group_id"]),
        "updateGroup": lambda: svc.update_group(p, ws, kw["group_id"], _json_body()),
        "deleteGroup": lambda: svc.delete_group(p, ws, kw["group_id"]),
        "listGroupMembers": lambda: svc.group_members(p, ws, kw["group_id"], limit=_q("limit"),
                                                      offset=_q("offset")),
        "addGroupMember": lambda: svc.set_member(p, ws, kw["group_id"], kw["user_id"], True),
        "removeGroupMember": lambda: svc.set_member(p, ws, kw["group_id"], kw["user_id"], False),
        "listApps": lambda: svc.list_apps(p, ws, limit=_q("limit"), offset=_q("offset")),
        "createApp": lambda: svc.create_app(p, ws, _json_body()),
        "getApp": lambda: svc.get_app(p, ws, kw["app"]),
        "updateApp": lambda: svc.update_app(p, ws, kw["app"], _json_body()),
        "rotateAppSecret": lambda: svc.rotate_app_secret(p, ws, kw["app"]),
        "deleteApp": lambda: svc.delete_app(p, ws, kw["app"]),
        "listConnections": lambda: svc.list_connections(p, ws, limit=_q("limit"),
                                                            offset=_q("offset")),
        "createConnection": lambda: svc.create_connection(p, ws, _json_body()),
        "getConnection": lambda: svc.get_connection(p, ws, kw["conn"]),
        "updateConnection": lambda: svc.update_connection(p, ws, kw["conn"], _json_body()),
        "deleteConnection": lambda: svc.delete_connection(p, ws, kw["conn"]),
        "getPolicies": lambda: svc.get_policies(p, ws),
        "putPolicies": lambda: svc.put_policies(p, ws, _json_body()),
        "listScimTokens": lambda: svc.list_scim_tokens(p, ws, limit=_q("limit"), offset=_q("offset")),
        "createScimToken": lambda: svc.create_scim_token(p, ws, _json_body()),
        "revokeScimToken": lambda: svc.revoke_scim_token(p, ws, kw["token_id"]),
        "listSigningKeys": lambda: svc.list_signing_keys(p, ws),
        "revokeSigningKey": lambda: svc.revoke_signing_key(p, ws, kw["key_id"]),
        "searchAuditEvents": lambda: svc.search_events(p, ws, limit=_q("limit"), before=_q("before"),
                                                       **_audit_filters()),
    }


def _audit_filters() -> dict:
    """The audit log's filters (``admin.auditlog``): policy decisions are included unless ``decisions=false``."""
    return {"type": _q("type"), "actor": _q("actor"), "since": _q("since"), "until": _q("until"),
            "user": _q("user"), "app": _q("app"), "kind": request.args.getlist("kind"), "outcome": _q("outcome"),
            "decisions": (_q("decisions") or "true").lower() not in ("false", "0", "no")}


def _export(svc: AdminService, p: Principal, ws: str):
    fmt = _q("format") or "json"
    chunks = svc.export_events(p, ws, fmt=fmt, **_audit_filters())
    mimetype = "text/csv" if fmt == "csv" else "application/json"
    resp = Response(chunks, mimetype=mimetype)
    resp.headers["Content-Disposition"] = f'attachment; filename="audit-{ws}.{fmt}"'
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _make_view(op):
    def view(**kw):
        svc = admin_service()
        p: Principal = g.admin_principal
        if "ws" in kw:
            svc.workspace(p, kw["ws"])  # scope first: another workspace is a 403 whatever the body
        if op.op_id == "exportAuditEvents":
            return _export(svc, p, kw["ws"])
        result = _handlers(svc, p, kw)[op.op_id]()
        if op.ok == "204":
            return Response(status=204)
        return _ok(result, int(op.ok))

    view.__name__ = op.op_id
    return view


for _op in OPERATIONS:
    bp.add_url_rule(flask_rule(_op.path), endpoint=_op.op_id, view_func=_make_view(_op), methods=[_op.method.upper()])


@bp.route(API_PREFIX + "/openapi.json")
def openapi_json():
    return _ok(document(admin_service().hub.settings.base_url))
