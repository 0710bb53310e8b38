"""The self-service security page: password, two-factor authentication, passkeys, sessions."""

from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for

from idp import passwords
from idp.accounts import user_groups
from idp.models import User
from idp.web.common import check_csrf, current_client, hub, login_required
from idp.web.mfa import _allowed

bp = Blueprint("security", __name__)


def _render(ws, sess, status=200, **extra):
    h = hub()
    with h.db() as db:
        user = db.get(User, sess.user_id)
        groups = user_groups(db, user.id) if user is not None else []
    if user is None or not user.active:  # deprovisioned while this session was being served: it is over
        h.sessions.end(sess.id, "deprovisioned")
        return redirect(url_for("auth.login", ws_slug=ws.slug, ended=1))
    sessions = h.sessions.list(user.id, h.lifetimes(ws))
    sessions.sort(key=lambda s: (s.id != sess.id, -s.last_active_at.timestamp()))
    enrolled = h.mfa.enrolled(user.id)
    return render_template("security.html", ws=ws, user=user, groups=groups, current=sess, sessions=sessions,
                           rules=passwords.RULES, enrolled=enrolled, passkeys=h.mfa.passkeys.list(user.id),
                           passkeys_allowed="webauthn" in _allowed(ws), **extra), status


@bp.route("/w/<ws_slug>/settings/security")
@login_required
def page(ws, sess):
    return _render(ws, sess)


@bp.route("/w/<ws_slug>/settings/security/sessions/<public_id>/end", methods=["POST"])
@login_required
def end(ws, sess, public_id):
    check_csrf()
    if hub().end_session(ws, sess, public_id[:64], current_client()):
        flash("The session has ended.", "status")
    else:
        flash("That session had already ended.", "status")
    return redirect(url_for("security.page", ws_slug=ws.slug) + "#sessions")


@bp.route("/w/<ws_slug>/settings/security/sessions/end-all", methods=["POST"])
@login_required
def end_all(ws, sess):
    check_csrf()
    n = hub().end_other_sessions(ws, sess, current_client())
    flash(f"Ended {n} other session{'s' if n != 1 else ''}. This session remains active.", "status")
    return redirect(url_for("security.page", ws_slug=ws.slug) + "#sessions")


@bp.route("/w/<ws_slug>/settings/security/password", methods=["POST"])
@login_required
def change_password(ws, sess):
    check_csrf()
    f = request.form
    errors = hub().change_password(ws, sess, f.get("current_password", "")[:1025], f.get("new_password", "")[:1025],
                                   f.get("confirm_password", "")[:1025], current_client())
    if errors:
        return _render(ws, sess, status=400, password_errors=errors)
    flash("Your password has been changed. Your other sessions have been signed out.", "status")
    return redirect(url_for("security.page", ws_slug=ws.slug) + "#password")
