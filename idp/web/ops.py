"""Operations endpoints: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, redirect, url_for

from idp import metrics
from idp.storage.base import StoreUnavailable
from idp.web.common import hub

bp = Blueprint("ops", __name__)


@bp.route("/healthz")
def healthz():
    return jsonify(status="ok")


@bp.route("/readyz")
def readyz():
    try:
        if hub().stores.ping:
            hub().stores.ping()
    except StoreUnavailable as exc:
        return jsonify(status="unavailable", reason=str(exc)), 503
    except Exception:  # any failure to check is "not ready" (fail closed)
        return jsonify(status="unavailable", reason="check failed"), 503
    return jsonify(status="ok")


@bp.route("/favicon.ico")
def favicon():
    return redirect(url_for("static", filename="favicon.svg"), code=301)


@bp.route("/metrics")
def prometheus():
    body, ctype = metrics.render()
    return Response(body, content_type=ctype)
