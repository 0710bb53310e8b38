"""The invitation link (``/w/{ws}/invite/{token}``): the invited person chooses a password and is signed in —
two-factor set-up first where required — through the sign-in core. The work is ``idp.invitations``'."""

from __future__ import annotations

from flask import Blueprint, render_template, request

from idp.hub import _new_password_errors
from idp.invitations import INVALID, needs_second_factor
from idp.web.auth import respond
from idp.web.common import browser_binding, check_csrf, current_client, hub, load_workspace

bp = Blueprint("invite", __name__)
MAX_FIELD = 1024


@bp.route("/w/<ws_slug>/invite/<token>", methods=["GET", "POST"])
def accept(ws_slug, token):
    ws = load_workspace(ws_slug)
    h = hub()
    found = h.invitations.find(ws, token)
    if found is None:
        return render_template("invite.html", ws=ws, invalid=INVALID), 400
    inv, user = found
    page = {"ws": ws, "token": token, "email": user.email, "name": user.name, "inviter": inv.invited_by_name or (
        "" if inv.invited_by.startswith("token:") else inv.invited_by), "expires": inv.expires_at,
        "second_factor": needs_second_factor(ws, user.role)}
    if request.method == "GET":
        return render_template("invite.html", **page)
    check_csrf()
    client = current_client()
    new, confirm = (request.form.get(k, "")[:MAX_FIELD + 1] for k in ("new_password", "confirm_password"))
    errors, activated = h.invitations.accept(ws, token, new, confirm, client, _new_password_errors)
    if errors:
        if activated is None:
            return render_template("invite.html", ws=ws, invalid=errors[0]), 400
        return render_template("invite.html", form_errors=errors, **page), 400
    with h.audit.deferred():  # the sign-in's events (policy decision, session) in one transaction
        return respond(ws, h.signin.activated(ws, activated.id, activated.email, client, binding=browser_binding()))
