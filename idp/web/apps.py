"""The app launcher page (``/w/{ws}/apps``): renders what ``idp.launcher`` answers for the signed-in user.

A SAML tile posts to ``saml.launch`` (IdP-initiated SSO, CSRF-checked there); an OIDC tile is a link to the app."""

from __future__ import annotations

from flask import Blueprint, render_template, request

from idp.launcher import Q_MAX
from idp.web.common import hub, login_required
from policies.engine import SECOND_FACTORS

bp = Blueprint("apps", __name__)


@bp.route("/w/<ws_slug>/apps")
@login_required
def page(ws, sess):
    q = request.args.get("q", "")[:Q_MAX].strip()
    tiles = hub().launcher.for_user(ws, sess.user_id, q)
    # an app that requires a second factor the session has not shown: its launch steps the session up first
    step_up = set() if SECOND_FACTORS.intersection(sess.amr or ()) else {t.slug for t in tiles if t.require_mfa}
    return render_template("apps.html", ws=ws, tiles=tiles, q=q, step_up=step_up)
