"""Operations endpoints: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

import hmac
import ipaddress

from flask import Blueprint, Response, jsonify, redirect, render_template, request, url_for

from idp import metrics
from idp.storage.base import StoreUnavailable
from idp.web.common import current_client, hub

bp = Blueprint("ops", __name__)
READY_RETRY_AFTER = 5  # seconds


@bp.route("/healthz")
def healthz():
    return jsonify(status="ok")


@bp.route("/readyz")
def readyz():
    """Whether a load balancer should send this node traffic: yes while it can serve from the database, Redis or
    not (``"status": "degraded"`` and ``"redis": "degraded"`` say Redis is away; sign-in and sessions then run on
    the database). No when the database cannot be reached: 503 with Retry-After. Only one node's own database
    trouble makes it unready, so a Redis outage never drains the whole fleet."""
    stores = hub().stores
    try:
        if stores.health is not None:
            found = stores.health()
        else:
            if stores.ping:
                stores.ping()
            found = {"database": "ok"}
    except StoreUnavailable as exc:
        found = {"database": "unavailable", "reason": str(exc)}
    except Exception:  # any failure to check is "not ready" (fail closed)
        found = {"database": "unavailable", "reason": "check failed"}
    for backend in ("database", "redis"):
        if backend in found:
            metrics.BACKEND_UP.labels(backend=backend).set(1 if found[backend] == "ok" else 0)
    if found.get("database") != "ok":
        return jsonify(status="unavailable", **found), 503, {"Retry-After": str(READY_RETRY_AFTER)}
    degraded = any(v != "ok" for v in found.values())
    return jsonify(status="degraded" if degraded else "ok", **found)


@bp.route("/help/security")
def help_security():
    """The employees' help article (Settings › Security: 2FA, password, sessions, alerts), linked from every page."""
    ws = request.args.get("ws", "")
    if not (0 < len(ws) <= 63 and ws.replace("-", "").isalnum() and ws.isascii() and ws == ws.lower()):
        ws = ""
    return render_template("help_security.html", ws=ws)


@bp.route("/favicon.ico")
def favicon():
    return redirect(url_for("static", filename="favicon.svg"), code=301)


@bp.route("/metrics")
def prometheus():
    """Prometheus text format, for scrapers on the operator's networks (or holding the metrics token): sign-in
    counts and latencies are operational data, not for the Internet."""
    settings = hub().settings
    try:
        ip = ipaddress.ip_address(current_client().ip)
        allowed = any(ip in net for net in settings.metrics_networks)
    except ValueError:  # no usable address: only the token can let it in
        allowed = False
    if not allowed and settings.metrics_token:
        auth = request.headers.get("Authorization", "")
        allowed = auth.startswith("Bearer ") and hmac.compare_digest(auth[7:].strip().encode(),
                                                                     settings.metrics_token.encode())
    if not allowed:
        return Response("metrics are not available to this client\n", status=403, content_type="text/plain")
    body, ctype = metrics.render()
    return Response(body, content_type=ctype)
