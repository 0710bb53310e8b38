"""The admin console (``/w/{ws}/admin/…``): server-rendered pages over ``admin.service.AdminService`` — the
same operations as the API, acting as the signed-in admin (role ``admin`` in this workspace, with 2FA when
``require_mfa_for_admins`` holds), with the site's CSRF protection."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import wraps

from flask import Blueprint, Response, flash, g, redirect, render_template, request, url_for

from admin.api import admin_service
from admin.forms import DURATION_UNITS, FormErrors, form_errors, join_duration, sentence, split_duration
from admin.service import ID_RE, AdminError
from admin.tokens import Principal
from idp.accounts import ADMIN_ROLES, PLANS, workspace_snapshot
from idp.eventcatalog import KINDS, OUTCOMES
from idp.models import User
from idp.web.common import (
    check_csrf,
    cookie_name,
    current_client,
    error_page,
    hub,
    load_session,
    load_workspace,
    session_cookie,
)
from policies.engine import ALL_METHODS

bp = Blueprint("admin_console", __name__)
FIELD_MAX = 4096


def _operator_session(ws, client):
    """(user, session, home workspace) of a hub operator signed in to *another* workspace of this browser, or None.

    A hub operator (role ``operator``, given only by the config file or an operator credential) signs in to their
    own workspace; the session cookie of that workspace (``idhub_session_<slug>``, path ``/``) comes with every
    request, so it opens every workspace's console. It is held to its own workspace's session policies (the IP
    allowlist) and always to a second factor."""
    h = hub()
    prefix = cookie_name("idhub_session_")
    seen = 0
    for name, token in request.cookies.items():
        if not name.startswith(prefix) or name == session_cookie(ws.slug):
            continue
        seen += 1
        if seen > 8:  # a browser signed in to many workspaces: look at a few, never at an unbounded list
            break
        with h.db() as db:
            home = workspace_snapshot(db, name[len(prefix):])
        if home is None:
            continue
        sess = h.sessions.load(token, home.id, h.lifetimes(home))
        if sess is None:
            continue
        with h.db() as db:
            user = db.get(User, sess.user_id)
        if user is None or not user.active or user.role != "operator" or user.workspace_id != home.id:
            continue
        if h.session_allowed(home, sess, client).effect == "deny":
            continue
        return user, sess, home
    return None


def _console_decision(policy_ws, user, sess, client):
    """The policy engine's answer at the console's door (stage ``admin``: the strictest policy, a second factor)
    under ``policy_ws``'s policies — the user's own workspace. A hub operator needs the second factor whatever
    any workspace's ``require_mfa_for_admins`` says."""
    h = hub()
    return h.policy.evaluate(h.policy_context(policy_ws, client.ip, stage="admin", user_id=user.id, account=user,
                                              methods=sess.amr))


def admin_required(view):
    """Signed in (else the sign-in page), allowed by the session policies, an active admin of this workspace
    (else 403), and — the strictest policy — signed in with a second factor unless the workspace turned
    ``require_mfa_for_admins`` off. A hub operator signed in to their own workspace (``_operator_session``)
    reaches every workspace's console, always with a second factor."""

    @wraps(view)
    def wrapper(ws_slug, *a, **kw):
        ws = load_workspace(ws_slug)
        sess = load_session(ws)
        client = current_client()
        h = hub()
        user = None
        if sess is not None:
            decision = h.session_allowed(ws, sess, client)
            if decision.effect == "deny":
                g.session = None
                return render_template("denied.html", ws=ws, reason=decision.reason), 403
            with h.db() as db:
                user = db.get(User, sess.user_id)
        if user is not None and user.active and user.workspace_id == ws.id and user.role in ADMIN_ROLES:
            decision = _console_decision(ws, user, sess, client)
            if decision.rule == "admin_second_factor":  # no second factor in this session: add one, in place
                return redirect(url_for("auth.step_up", ws_slug=ws.slug, next=request.full_path.rstrip("?")))
            if decision.effect != "allow":
                return render_template("admin/mfa_required.html", ws=ws, reason=decision.reason), 403
            p = Principal("user", user.email, user.role == "operator", ws.id, actor_id=user.id, ip=client.ip,
                          user_agent=client.user_agent, request_id=client.request_id)
            g.operator_home = ws if user.role == "operator" else None
        else:
            found = _operator_session(ws, client)
            if found is None:
                if sess is None:
                    return redirect(url_for("auth.login", ws_slug=ws.slug, next=request.full_path.rstrip("?")))
                h.audit.record("admin.console.denied", workspace_id=ws.id, actor_id=sess.user_id, ip=client.ip,
                               request_id=client.request_id, data={"path": request.path[:200], "reason": "not_admin"})
                return error_page(403, "Forbidden", "The admin console is for this workspace's admins. Ask an admin "
                                                    "if you need access.")
            user, op_sess, home = found
            g.session = op_sess  # the console's forms are bound to the operator's own session (CSRF)
            if _console_decision(home, user, op_sess, client).effect != "allow":
                # the second factor is added to the operator's own session, in their workspace, then back here
                back = url_for("admin_console.dashboard", ws_slug=home.slug)
                return render_template("admin/mfa_required.html", ws=home, step_up_url=url_for(
                    "auth.step_up", ws_slug=home.slug, next=back), reason="The hub operator uses the console "
                    "with two-factor authentication. Confirm this session with a second factor (or set one up) "
                    "and open this workspace again."), 403
            p = Principal("user", user.email, True, ws.id, actor_id=user.id, ip=client.ip,
                          user_agent=client.user_agent, request_id=client.request_id)
            g.operator_home = home
        g.admin_user = user
        g.admin_principal = p
        try:
            return view(ws, p, *a, **kw)
        except AdminError as exc:
            if exc.status == 404:
                return error_page(404, "Not found", exc.message.capitalize() + ".")
            return error_page(exc.status, "Not allowed", exc.message)

    return wrapper


def _form(name: str, default: str = "") -> str:
    return (request.form.get(name) or default)[:FIELD_MAX]


def _lines(name: str) -> list[str]:
    return [x.strip() for x in _form(name).replace(",", "\n").splitlines() if x.strip()]


def _render(template: str, ws, status: int = 200, **ctx):
    return render_template(f"admin/{template}", ws=ws, admin=g.admin_user, section=template.split(".")[0],
                           **ctx), status


def _error_text(exc: AdminError) -> str:
    return f"{exc.field}: {exc.message}" if exc.field else exc.message


def _listing(errors: list[str], list_page, *args) -> dict:
    """A page of a list at ``?offset=`` (the first page, and the error, when the offset is not a number)."""
    try:
        return list_page(*args, offset=request.args.get("offset"))
    except AdminError as exc:
        errors.append(_error_text(exc))
        return list_page(*args)


# ---- dashboard ---------------------------------------------------------------------------------------------
@bp.route("/w/<ws_slug>/admin/")
@admin_required
def dashboard(ws, p):
    svc = admin_service()
    stats = svc.dashboard(p, ws.slug)
    recent = svc.search_events(p, ws.slug, limit=10, decisions=False)["items"]
    return _render("dashboard.html", ws, stats=stats, recent=recent)


# ---- workspaces (hub operator) -----------------------------------------------------------------------------
@bp.route("/w/<ws_slug>/admin/workspaces", methods=["GET", "POST"])
@admin_required
def workspaces(ws, p):
    """Every workspace of the hub, and a new one (the hub operator only: 403 for a workspace admin)."""
    svc = admin_service()
    errors: list[str] = []
    fe, status = FormErrors(), 200
    if request.method == "POST":
        check_csrf()
        body = {"slug": _form("slug").strip().lower(), "name": _form("name").strip(), "plan": _form("plan", "free"),
                "domains": _lines("domains")}
        try:
            created = svc.create_workspace(p, body)
        except AdminError as exc:
            if exc.status == 403:
                raise
            fe, status = _errors(exc, WORKSPACE_LABELS), exc.status
        else:
            flash(f"Created the workspace {created['name']} ({created['slug']}). Invite its first admin from its "
                  "Users page.", "status")
            return redirect(url_for("admin_console.users", ws_slug=created["slug"]))
    page = _listing(errors, svc.list_workspaces, p)
    return _render("workspaces.html", ws, status, page=page, errors=errors, fe=fe, plans=PLANS,
                   form=request.form if fe else {})


# ---- users -------------------------------------------------------------------------------------------------
@bp.route("/w/<ws_slug>/admin/users", methods=["GET", "POST"])
@admin_required
def users(ws, p):
    svc = admin_service()
    errors: list[str] = []
    status = 200
    if request.method == "POST":
        check_csrf()
        body = {"email": _form("email"), "name": _form("name"), "role": _form("role", "member"),
                "groups": request.form.getlist("groups")[:100]}
        if _form("password"):
            body["password"] = _form("password")
        try:
            u = svc.create_user(p, ws.slug, body)
        except AdminError as exc:
            errors, status = [_error_text(exc)], exc.status
        else:
            flash(f"Invited {u['email']}: the invitation is on its way (its link works for 7 days)."
                  if u["status"] == "invited" else f"Created {u['email']}.", "status")
            return redirect(url_for("admin_console.users", ws_slug=ws.slug))
    try:
        page = svc.list_users(p, ws.slug, q=request.args.get("q"), status=request.args.get("status"),
                              offset=request.args.get("offset"))
    except AdminError as exc:
        errors, status = [_error_text(exc)], 400
        page = svc.list_users(p, ws.slug)
    groups = svc.list_groups(p, ws.slug, limit=200)["items"]
    return _render("users.html", ws, status, page=page, groups=groups, errors=errors, q=request.args.get("q", ""),
                   status_filter=request.args.get("status", ""), form=request.form if errors else {})


@bp.route("/w/<ws_slug>/admin/users/<user_id>", methods=["GET", "POST"])
@admin_required
def user(ws, p, user_id):
    svc = admin_service()
    errors: list[str] = []
    status = 200
    if request.method == "POST":
        check_csrf()
        try:
            svc.update_user(p, ws.slug, user_id, {"name": _form("name"), "role": _form("role", "member"),
                                                  "groups": request.form.getlist("groups")[:100]})
        except AdminError as exc:
            if exc.status == 404:
                raise
            errors, status = [_error_text(exc)], exc.status
        else:
            flash("Saved.", "status")
            return redirect(url_for("admin_console.user", ws_slug=ws.slug, user_id=user_id))
    u = svc.get_user(p, ws.slug, user_id)
    groups = svc.list_groups(p, ws.slug, limit=200)["items"]
    return _render("user.html", ws, status, u=u, groups=groups, errors=errors,
                   events=svc.user_events(p, ws.slug, u["id"], limit=20),
                   user_apps=svc.apps_of_user(p, ws.slug, u["id"]),
                   sessions=svc.user_sessions(p, ws.slug, u["id"])["items"],
                   factors=svc.second_factors(p, ws.slug, u["id"]))


@bp.route("/w/<ws_slug>/admin/users/<user_id>/<action>", methods=["POST"])
@admin_required
def user_action(ws, p, user_id, action):
    check_csrf()
    svc = admin_service()
    back = redirect(url_for("admin_console.user", ws_slug=ws.slug, user_id=user_id))
    try:
        if action == "disable":
            svc.set_active(p, ws.slug, user_id, False)
            flash("The user is disabled and every session has ended.", "status")
        elif action == "enable":
            svc.set_active(p, ws.slug, user_id, True)
            flash("The user is enabled.", "status")
        elif action == "reset-2fa":
            r = svc.reset_mfa(p, ws.slug, user_id)
            flash(f"Two-factor authentication was reset ({r['sessions_ended']} session(s) ended). The user sets it "
                  "up again at the next sign-in.", "status")
        elif action == "end-sessions":
            r = svc.end_sessions(p, ws.slug, user_id)
            flash(f"Ended {r['sessions_ended']} session(s).", "status")
        elif action == "end-session":
            svc.end_user_session(p, ws.slug, user_id, _form("session"))
            flash("The session has ended: that browser is back at the sign-in page.", "status")
        elif action == "password-reset":
            r = svc.send_password_reset(p, ws.slug, user_id)
            flash(f"A password reset link is on its way to {r['email']} (it works once, for 24 hours).", "status")
        elif action == "resend-invitation":
            r = svc.resend_invitation(p, ws.slug, user_id)
            flash(f"A new invitation is on its way to {r['email']}; the previous link no longer works.", "status")
        elif action == "revoke-invitation":
            svc.revoke_invitation(p, ws.slug, user_id)
            flash("The invitation was revoked: its link no longer works.", "status")
        else:
            return error_page(404, "Not found", "That action does not exist.")
    except AdminError as exc:
        if exc.status == 404:
            raise
        flash(_error_text(exc), "error")
    return back


# ---- forms: every error under its field, what was typed kept -----------------------------------------------
# A form with errors is shown again with everything that was typed except secrets (a client secret, a bind
# password): those are never sent back to the browser; the field says so and asks for them again.
GROUP_LABELS = {"name": "Name"}
WORKSPACE_LABELS = {"name": "Name", "slug": "Address", "plan": "Plan", "domains": "Email domain"}
APP_LABELS = {
    "oidc": {"name": "Name", "slug": "Short name", "redirect_uris": "Redirect URIs"},
    "saml": {"name": "Name", "slug": "Short name", "metadata_xml": "Metadata", "metadata_url": "Metadata URL",
             "entity_id": "Entity ID", "acs_url": "ACS URL"},
}
CONN_LABELS = {
    "name": "Name", "slug": "Short name", "preset": "Provider", "domains": "Email domain", "issuer": "Issuer URL",
    "client_id": "Client ID", "client_secret": "Client secret", "metadata_xml": "Metadata",
    "metadata_url": "Metadata URL", "url": "Server URL", "bind_dn": "Bind DN", "bind_password": "Bind password",
    "user_search_base": "User search base", "user_filter": "User filter", "group_search_base": "Group search base",
    "scopes": "Scopes", "allowed_tenants": "Tenant ID", "groups_endpoint": "Groups endpoint",
    "certs": "Pinned certificates", "clock_skew": "Clock skew", "timeout": "Timeout",
    "attribute_map": "Attribute mapping", "require_signed_assertion": "Signed assertion",
}
POLICY_LABELS = {"ip_allowlist": "Allowed networks", "mfa_methods": "Second factors",
                 "session_idle_timeout": "Idle timeout", "session_max_lifetime": "Sign-in lifetime"}
SCIM_LABELS = {"name": "Token name"}
# where the service names a field the form shows under another name
SAML_APP_NAMES = {"metadata": "metadata_xml", "acs": "acs_url"}
CONN_NAMES = {"metadata": "metadata_xml", "attribute_mapping": "attribute_map"}


def _errors(exc: AdminError, labels: dict, names: dict | None = None) -> FormErrors:
    return form_errors(exc, request.form, labels, names)


def _confirmed() -> bool:
    """A destructive action runs only when its confirmation form was sent (``confirm=1``); otherwise the
    confirmation page is shown (no JavaScript needed)."""
    return request.form.get("confirm") == "1"


def _confirm_page(ws, title: str, question: str, details: list[str], button: str, cancel: str):
    return _render("confirm.html", ws, 200, title=title, question=question, details=details, button=button,
                   cancel=cancel, action=request.path)


def _plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


# ---- groups ------------------------------------------------------------------------------------------------
@bp.route("/w/<ws_slug>/admin/groups", methods=["GET", "POST"])
@admin_required
def groups(ws, p):
    svc = admin_service()
    fe, status = FormErrors(), 200
    if request.method == "POST":
        check_csrf()
        try:
            svc.create_group(p, ws.slug, {"name": _form("name").strip()})
        except AdminError as exc:
            fe, status = _errors(exc, GROUP_LABELS), exc.status
        else:
            flash(f"Created the group {_form('name').strip()}.", "status")
            return redirect(url_for("admin_console.groups", ws_slug=ws.slug))
    return _render("groups.html", ws, status, groups=svc.list_groups(p, ws.slug, limit=200)["items"], errors=[],
                   fe=fe, form=request.form if fe else {}, apps_by_group=svc.apps_by_group(p, ws.slug))


@bp.route("/w/<ws_slug>/admin/groups/<group_id>/delete", methods=["POST"])
@admin_required
def group_delete(ws, p, group_id):
    check_csrf()
    svc = admin_service()
    if not _confirmed():
        g_ = svc.group_impact(p, ws.slug, group_id)
        apps = g_["apps"]
        question = f"Delete group {g_['name']}?"
        if apps:
            losing = max(a["losing"] for a in apps)
            question += (f" {_plural(losing, 'member')} lose access to {_plural(len(apps), 'app')} assigned through "
                         "it." if losing else " Its members keep their apps through their other groups.")
        details = [f"{_plural(g_['members'], 'person', 'people')} {'is' if g_['members'] == 1 else 'are'} in this "
                   "group; their accounts stay, only their membership ends."]
        details += [f"{a['name']}: {_plural(a['losing'], 'member')} of this group lose{'s' if a['losing'] == 1 else ''}"
                    " access (signed out of it at once)" + ("" if a["losing"] == g_["members"] else
                                                             "; the others keep it through another group")
                    for a in apps]
        if g_["managed_by"] == "scim":
            details.append("This group comes from SCIM provisioning: the identity provider may create it again.")
        return _confirm_page(ws, f"Delete group {g_['name']}", question, details, "Delete group",
                             url_for("admin_console.groups", ws_slug=ws.slug))
    svc.delete_group(p, ws.slug, group_id)
    flash("The group was deleted.", "status")
    return redirect(url_for("admin_console.groups", ws_slug=ws.slug))


# ---- apps --------------------------------------------------------------------------------------------------
def _saml_source(current: dict | None = None) -> dict:
    """The SAML form's source of the app's settings: pasted metadata, a metadata URL, or entity ID and ACS URL.
    On the edit page (``current``: the app's settings) an unchanged entity ID and ACS URL are no change."""
    body: dict = {}
    if _form("metadata_url").strip():
        body["metadata_url"] = _form("metadata_url").strip()[:2048]
    if request.form.get("metadata_xml", "").strip():
        body["metadata_xml"] = request.form.get("metadata_xml", "")[:60000]
    entity, acs = _form("entity_id").strip(), _lines("acs_url")
    if current is not None and entity == (current.get("sp_entity_id") or "") and acs == current.get("acs_urls"):
        entity, acs = "", []
    if (entity or acs) if current is not None else not body:
        body["entity_id"] = entity
        body["acs_url"] = acs[0] if len(acs) == 1 else (acs or "")
    return body


@bp.route("/w/<ws_slug>/admin/apps", methods=["GET", "POST"])
@admin_required
def apps(ws, p):
    svc = admin_service()
    errors: list[str] = []
    fe, status = FormErrors(), 200
    proto = _form("protocol") if request.method == "POST" else ""
    if request.method == "POST":
        check_csrf()
        body: dict = {"slug": _form("slug").strip(), "name": _form("name").strip(), "protocol": proto}
        if proto == "oidc":
            body["redirect_uris"] = _lines("redirect_uris")
            if request.form.get("public"):
                body["token_endpoint_auth_method"] = "none"
        elif proto == "saml":  # metadata pasted, or by URL (fetched with idp.netfetch's checks), or the two fields
            body.update(_saml_source())
        if request.form.get("require_mfa"):
            body["require_mfa"] = True
        try:
            created = svc.create_app(p, ws.slug, body)
        except AdminError as exc:
            fe, status = _errors(exc, APP_LABELS.get(proto, {}), SAML_APP_NAMES), exc.status
        else:
            return _render("app.html", ws, 201, app=created, secret=created.get("client_secret"), errors=[],
                           fe=FormErrors(), form=None, access_errors=[],
                           groups=svc.list_groups(p, ws.slug, limit=200)["items"])
    page = _listing(errors, svc.list_apps, p, ws.slug)
    return _render("apps.html", ws, status if status != 200 or not errors else 400, page=page, apps=page["items"],
                   errors=errors, fe=fe, proto=proto, form=request.form if fe else {})


@bp.route("/w/<ws_slug>/admin/apps/<app_slug>", methods=["GET", "POST"])
@admin_required
def app_detail(ws, p, app_slug):
    """An app's settings for its side, who may use it, and every setting of the create form, changed in place
    (the short name stays: it is in the app's addresses)."""
    svc = admin_service()
    fe, status = FormErrors(), 200
    if request.method == "POST":
        check_csrf()
        current = svc.get_app(p, ws.slug, app_slug)
        body: dict = {"name": _form("name").strip(), "require_mfa": bool(request.form.get("require_mfa"))}
        if current["protocol"] == "oidc":
            body["redirect_uris"] = _lines("redirect_uris")
        else:
            body.update(_saml_source(current["settings"]))
        try:
            out = svc.update_app(p, ws.slug, app_slug, body)
        except AdminError as exc:
            if exc.status == 404:
                raise
            fe, status = _errors(exc, APP_LABELS[current["protocol"]], SAML_APP_NAMES), exc.status
        else:
            flash(f"Saved the app {out['name']}.", "status")
            return redirect(url_for("admin_console.app_detail", ws_slug=ws.slug, app_slug=app_slug))
    return _app_page(ws, p, app_slug, status, fe=fe)


def _app_page(ws, p, app_slug: str, status: int = 200, fe: FormErrors | None = None, access_errors=()):
    svc = admin_service()
    return _render("app.html", ws, status, app=svc.get_app(p, ws.slug, app_slug), secret=None, errors=[],
                   fe=fe or FormErrors(), form=request.form if fe else None, access_errors=list(access_errors),
                   groups=svc.list_groups(p, ws.slug, limit=200)["items"])


@bp.route("/w/<ws_slug>/admin/apps/<app_slug>/access", methods=["POST"])
@admin_required
def app_access(ws, p, app_slug):
    """Who may use the app (everyone, or the members of the checked groups) and its launcher tile: through
    ``AdminService.update_app``, audited, and an app taken from someone is revoked at once, as over the API."""
    check_csrf()
    body = {"assigned_groups": None if request.form.get("access") != "groups"
            else list(dict.fromkeys(request.form.getlist("assigned_groups")[:200])),
            "show_in_launcher": bool(request.form.get("show_in_launcher")),
            "description": _form("description").strip() or None}
    try:
        admin_service().update_app(p, ws.slug, app_slug, body)
    except AdminError as exc:
        if exc.status == 404:
            raise
        return _app_page(ws, p, app_slug, exc.status, access_errors=_errors(exc, {}).general)
    flash("Saved who may use this app.", "status")
    return redirect(url_for("admin_console.app_detail", ws_slug=ws.slug, app_slug=app_slug))


@bp.route("/w/<ws_slug>/admin/apps/<app_slug>/client-type", methods=["POST"])
@admin_required
def app_client_type(ws, p, app_slug):
    """Public to confidential (a new secret, shown once) or back (the secret dropped, the app's tokens revoked),
    confirmed first; through ``AdminService.update_app`` as over the API."""
    check_csrf()
    svc = admin_service()
    app = svc.get_app(p, ws.slug, app_slug)
    public = app["protocol"] == "oidc" and app["settings"]["token_endpoint_auth_method"] == "none"
    back = url_for("admin_console.app_detail", ws_slug=ws.slug, app_slug=app_slug)
    if not _confirmed():
        if public:
            return _confirm_page(ws, f"Make {app['name']} a confidential client",
                                 f"Make {app['name']} a confidential client?",
                                 ["It gets a client secret, shown once on the next page: put it in the app's "
                                  "configuration (the app then authenticates to the token endpoint with it).",
                                  "Its client ID, who may use it and its tile stay as they are."],
                                 "Make it confidential", back)
        return _confirm_page(ws, f"Make {app['name']} a public client", f"Make {app['name']} a public client?",
                             ["Its client secret stops working at once, and it can no longer use the client "
                              "credentials grant.", "Every token issued to it is revoked: people sign in to it again."],
                             "Make it public", back)
    target = "client_secret_basic,client_secret_post" if public else "none"
    try:
        out = svc.update_app(p, ws.slug, app_slug, {"token_endpoint_auth_method": target})
    except AdminError as exc:
        if exc.status == 404:
            raise
        flash(sentence(exc.message), "error")
        return redirect(back)
    if out.get("client_secret"):
        return _render("app.html", ws, 201, app=out, secret=out["client_secret"], errors=[], fe=FormErrors(),
                       form=None, access_errors=[], groups=svc.list_groups(p, ws.slug, limit=200)["items"])
    flash(f"{out['name']} is now a public client.", "status")
    return redirect(back)


@bp.route("/w/<ws_slug>/admin/apps/<app_slug>/secret", methods=["POST"])
@admin_required
def app_secret(ws, p, app_slug):
    check_csrf()
    svc = admin_service()
    if not _confirmed():
        app = svc.get_app(p, ws.slug, app_slug)
        return _confirm_page(ws, f"New client secret for {app['name']}", f"Replace the client secret of {app['name']}?",
                             ["The current secret stops working at once: the app cannot sign anyone in until its "
                              "configuration has the new secret.", "The new secret is shown once, on the next page."],
                             "Replace the secret", url_for("admin_console.app_detail", ws_slug=ws.slug,
                                                           app_slug=app_slug))
    try:
        app = svc.rotate_app_secret(p, ws.slug, app_slug)
    except AdminError as exc:
        if exc.status == 404:
            raise
        flash(sentence(exc.message), "error")
        return redirect(url_for("admin_console.app_detail", ws_slug=ws.slug, app_slug=app_slug))
    return _render("app.html", ws, 201, app=app, secret=app["client_secret"], errors=[], fe=FormErrors(), form=None,
                   access_errors=[], groups=svc.list_groups(p, ws.slug, limit=200)["items"])


@bp.route("/w/<ws_slug>/admin/apps/<app_slug>/delete", methods=["POST"])
@admin_required
def app_delete(ws, p, app_slug):
    check_csrf()
    svc = admin_service()
    if not _confirmed():
        app = svc.get_app(p, ws.slug, app_slug)
        who = ("everyone in the workspace" if app["assigned_groups"] is None else
               "the members of " + ", ".join(app["assigned_groups"]) if app["assigned_groups"] else "nobody")
        ident = (f"client ID {app['settings']['client_id']}" if app["protocol"] == "oidc" else
                 f"entity ID {app['settings']['sp_entity_id']}")
        return _confirm_page(ws, f"Remove {app['name']}", f"Remove the app {app['name']}?",
                             [f"It may now be used by {who}: nobody can sign in to it through idhub any more, and "
                              "its tile leaves the app launcher.",
                              f"Its registration ({ident}) is deleted and cannot be restored; adding it again gives "
                              "it new settings to configure in the app."],
                             "Remove app", url_for("admin_console.app_detail", ws_slug=ws.slug, app_slug=app_slug))
    svc.delete_app(p, ws.slug, app_slug)
    flash("The app was removed.", "status")
    return redirect(url_for("admin_console.apps", ws_slug=ws.slug))


# ---- connections -------------------------------------------------------------------------------------------
def _redirect_pattern(ws) -> str:
    """The redirect URI of an OIDC connection, with ``{slug}`` for its short name (shown before it exists)."""
    return hub().url(f"/w/{ws.slug}/sso/") + "{slug}/callback"


@bp.route("/w/<ws_slug>/admin/connections", methods=["GET", "POST"])
@admin_required
def connections(ws, p):
    svc = admin_service()
    errors: list[str] = []
    fe, status = FormErrors(), 200
    proto = _form("protocol") if request.method == "POST" else ""
    if request.method == "POST":
        check_csrf()
        body: dict = {"slug": _form("slug").strip(), "name": _form("name").strip(), "protocol": proto,
                      "domains": _lines("domains")}
        if _form("preset") in ("okta", "azure_ad", "generic"):
            body["preset"] = _form("preset")
        if proto == "oidc":
            body.update(issuer=_form("issuer").strip(), client_id=_form("client_id").strip())
            if _form("client_secret"):
                body["client_secret"] = _form("client_secret")
        elif proto == "saml":  # pasted metadata, or a metadata URL (exactly one)
            if _form("metadata_url").strip():
                body["metadata_url"] = _form("metadata_url").strip()[:2048]
            if _form("metadata_xml").strip() or not _form("metadata_url").strip():
                body["metadata_xml"] = request.form.get("metadata_xml", "")[:60000]
        elif proto == "ldap":
            body.update({k: _form(k).strip() for k in ("url", "bind_dn", "user_search_base")},
                        bind_password=_form("bind_password"), start_tls=bool(request.form.get("start_tls")))
            body.update({k: _form(k).strip() for k in ("user_filter", "group_search_base") if _form(k).strip()})
        try:
            created = svc.create_connection(p, ws.slug, body)
        except AdminError as exc:
            fe, status = _errors(exc, CONN_LABELS, CONN_NAMES), exc.status
        else:
            flash(f"Added the connection {created['name']}. Test it before people rely on it.", "status")
            return redirect(url_for("admin_console.connections", ws_slug=ws.slug))
    page = _listing(errors, svc.list_connections, p, ws.slug)
    return _render("connections.html", ws, status if status != 200 or not errors else 400, page=page,
                   connections=page["items"], tests=_last_tests(svc, p, ws.slug), errors=errors, fe=fe, proto=proto,
                   form=request.form if fe else {}, redirect_pattern=_redirect_pattern(ws))


def _last_tests(svc, p, slug: str) -> dict[str, dict]:
    """The latest "Test connection" of each connection, from the audit log: succeeded, failed (and the failed
    check) or started without a result (the admin did not finish signing in at the identity provider)."""
    tests: dict[str, dict] = {}
    for e in svc.search_events(p, slug, type="federation.test.*", limit=200)["items"]:
        conn = (e.get("data") or {}).get("connection")
        if not conn or conn in tests:
            continue
        result = {"federation.test.succeeded": "succeeded", "federation.test.failed": "failed"}.get(e["type"],
                                                                                                  "unfinished")
        checks = ", ".join(e["data"].get("failed_checks") or [])
        tests[conn] = {"result": result, "at": e["occurred_at"][:16].replace("T", " "), "by": e.get("actor_label"),
                       "check": checks, "seq": e["seq"]}
    if any(t["result"] == "unfinished" for t in tests.values()):  # an upstream refusal: the failed check
        for e in svc.search_events(p, slug, type="federation.signin.failure", limit=200)["items"]:
            t = tests.get((e.get("data") or {}).get("connection"))
            if t and t["result"] == "unfinished" and e["data"].get("test") and e["seq"] > t["seq"]:
                t.update(result="failed", check=e["data"].get("check") or "", at=e["occurred_at"][:16]
                         .replace("T", " "))
    return tests


BOOL_KEYS = ("jit", "link_by_email", "email_verified_by_idp", "sso_required", "trust_mfa")
PEM_END = "-----END CERTIFICATE-----"


def _optional(name: str):
    """A text field that may be left empty: empty is ``None`` (the key is removed; its default applies)."""
    return _form(name).strip() or None


def _number(name: str):
    value = _form(name).strip()
    return int(value) if value.isdigit() and len(value) < 10 else (value or None)  # the validator names the rest


def _pems(name: str) -> list[str] | None:
    text = request.form.get(name, "")[:60000].replace("\r\n", "\n")
    pems = [(chunk.strip() + "\n" + PEM_END).strip() for chunk in text.split(PEM_END) if chunk.strip()]
    return pems or None


def _attribute_map() -> dict | None:
    out = {}
    for line in _form("attribute_map").splitlines():
        name, sep, field = line.strip().rpartition("=")
        if not sep:
            name, field = field, ""
        if name.strip() or field.strip():
            out[name.strip()] = field.strip()
    return out or None


def _connection_change(protocol: str) -> dict:
    """The edit form as a change of config-file keys: every field the form shows (empty optional fields remove
    their key; empty secret fields leave the secret as it is)."""
    body: dict = {"name": _form("name").strip(), "domains": _lines("domains"), "attribute_map": _attribute_map()}
    if _form("preset"):
        body["preset"] = _form("preset")
    body.update({k: bool(request.form.get(k)) for k in BOOL_KEYS})
    if protocol == "oidc":
        body.update(issuer=_form("issuer").strip(), client_id=_form("client_id").strip(),
                    scopes=[s for s in _form("scopes").replace(",", " ").split() if s] or None,
                    allowed_tenants=_lines("allowed_tenants") or None, groups_endpoint=_optional("groups_endpoint"))
        if request.form.get("remove_client_secret"):
            body["client_secret"] = None
        elif _form("client_secret"):
            body["client_secret"] = _form("client_secret")
    elif protocol == "saml":
        if request.form.get("metadata_xml", "").strip():
            body["metadata_xml"] = request.form.get("metadata_xml", "")[:60000]
        if _form("metadata_url").strip():  # read from a URL from now on (empty: as it is)
            body["metadata_url"] = _form("metadata_url").strip()[:2048]
        body.update(certs=_pems("certs"), allow_unsolicited=bool(request.form.get("allow_unsolicited")),
                    allowed_tenants=_lines("allowed_tenants") or None, clock_skew=_number("clock_skew"),
                    require_signed_assertion={"yes": True, "no": False}.get(_form("require_signed_assertion")))
    elif protocol == "ldap":
        body.update({k: _form(k).strip() for k in ("url", "bind_dn", "user_search_base")},
                    user_filter=_optional("user_filter"), group_search_base=_optional("group_search_base"),
                    start_tls=bool(request.form.get("start_tls")), timeout=_number("timeout"))
        if _form("bind_password"):
            body["bind_password"] = _form("bind_password")
    return body


def _metadata_summary(xml: str | None) -> dict | None:
    """What the edit page says about a SAML connection's metadata: the IdP's entity id and its certificates'
    expiry (read with ``federation.saml_sp``, as at sign-in)."""
    if xml is None:
        return None
    from federation.saml_sp import parse_idp_metadata

    try:
        meta = parse_idp_metadata(xml)
    except Exception:  # noqa: BLE001 - unreadable stored metadata: say so rather than fail the page
        return {"entity_id": None, "expires": []}
    return {"entity_id": meta.get("entity_id"),
            "expires": [d.strftime("%Y-%m-%d") for d in meta.get("cert_not_after") or []]}


@bp.route("/w/<ws_slug>/admin/connections/<conn_slug>", methods=["GET", "POST"])
@admin_required
def connection_edit(ws, p, conn_slug):
    svc = admin_service()
    fe, status = FormErrors(), 200
    conn = svc.get_connection(p, ws.slug, conn_slug)
    if request.method == "POST":
        check_csrf()
        try:
            out = svc.update_connection(p, ws.slug, conn_slug, _connection_change(conn["protocol"]))
        except AdminError as exc:
            if exc.status == 404:
                raise
            fe, status = _errors(exc, CONN_LABELS, CONN_NAMES), exc.status
        else:
            changed = ", ".join(out["changed"])
            flash(f"Saved the connection {out['name']}" + (f" (changed: {changed})." if changed else
                                                            " (nothing changed)."), "status")
            return redirect(url_for("admin_console.connection_edit", ws_slug=ws.slug, conn_slug=conn_slug))
    declared = svc.connection_entry(p, ws.slug, conn_slug)
    return _render("connection.html", ws, status, c=conn, entry=declared["entry"],
                   metadata_url=declared["metadata_url"], metadata=_metadata_summary(declared["metadata_xml"]),
                   errors=[], fe=fe, form=request.form if fe else None)


@bp.route("/w/<ws_slug>/admin/connections/<conn_slug>/delete", methods=["POST"])
@admin_required
def connection_delete(ws, p, conn_slug):
    check_csrf()
    svc = admin_service()
    if not _confirmed():
        c = svc.get_connection(p, ws.slug, conn_slug)
        linked = svc.connection_links(p, ws.slug, conn_slug)
        details = [f"{_plural(linked, 'account')} signed in through it: they can no longer sign in this way"
                   + (" (those with an idhub password or another connection still can)." if linked else ".")]
        if c["domains"]:
            details.append("Addresses at " + ", ".join(c["domains"]) + " are no longer sent to it from the sign-in "
                           "page.")
        if c["secrets_set"]:
            details.append("Its stored secrets are deleted: adding it again means entering them again.")
        return _confirm_page(ws, f"Remove {c['name']}", f"Remove the connection {c['name']}?", details,
                             "Remove connection", url_for("admin_console.connection_edit", ws_slug=ws.slug,
                                                          conn_slug=conn_slug))
    svc.delete_connection(p, ws.slug, conn_slug)
    flash("The connection was removed.", "status")
    return redirect(url_for("admin_console.connections", ws_slug=ws.slug))


# ---- policies ----------------------------------------------------------------------------------------------
# The policy form's checkboxes. The form PUTs the whole policy, so every key it can hold is here: a key left out
# would be dropped at every save.
POLICY_FLAGS = ("require_mfa", "require_mfa_for_admins", "require_phishing_resistant_mfa",
                "require_phishing_resistant_mfa_for_admins")


def _policy_form(pol: dict) -> dict:
    """The policy form's values: stored policies, durations as a number and a unit."""
    idle, max_ = split_duration(pol.get("session_idle_timeout")), split_duration(pol.get("session_max_lifetime"))
    return {"require_mfa": bool(pol.get("require_mfa")), "require_mfa_for_admins": pol.get("require_mfa_for_admins",
                                                                                              True),
            "require_phishing_resistant_mfa": bool(pol.get("require_phishing_resistant_mfa")),
            "require_phishing_resistant_mfa_for_admins": bool(pol.get("require_phishing_resistant_mfa_for_admins")),
            "mfa_methods": pol.get("mfa_methods", list(ALL_METHODS)),
            "ip_allowlist": "\n".join(pol.get("ip_allowlist", [])),
            "session_idle_timeout": idle[0], "session_idle_timeout_unit": idle[1],
            "session_max_lifetime": max_[0], "session_max_lifetime_unit": max_[1]}


@bp.route("/w/<ws_slug>/admin/policies", methods=["GET", "POST"])
@admin_required
def policies(ws, p):
    svc = admin_service()
    fe, status = FormErrors(), 200
    if request.method == "POST":
        check_csrf()
        # every flag the form holds (one left out would be dropped); those off by default only when on
        body: dict = {key: bool(request.form.get(key)) for key in POLICY_FLAGS
                      if request.form.get(key) or key in ("require_mfa", "require_mfa_for_admins")}
        body["ip_allowlist"] = _lines("ip_allowlist")
        methods = [m for m in request.form.getlist("mfa_methods") if isinstance(m, str)][:10]
        if methods:
            body["mfa_methods"] = methods
        for key in ("session_idle_timeout", "session_max_lifetime"):
            value = join_duration(_form(key), _form(f"{key}_unit"))
            if value is not None:
                body[key] = value
        try:
            svc.put_policies(p, ws.slug, body)
        except AdminError as exc:
            fe, status = _errors(exc, POLICY_LABELS), exc.status
        else:
            flash("Policies saved.", "status")
            return redirect(url_for("admin_console.policies", ws_slug=ws.slug))
    view = svc.get_policies(p, ws.slug)
    if fe:
        form = {k: _form(k) for k in ("ip_allowlist", "session_idle_timeout", "session_idle_timeout_unit",
                                      "session_max_lifetime", "session_max_lifetime_unit")}
        form.update({key: bool(request.form.get(key)) for key in POLICY_FLAGS},
                    mfa_methods=request.form.getlist("mfa_methods")[:10])
    else:
        form = _policy_form(view["policies"])
    return _render("policies.html", ws, status, view=view, errors=[], fe=fe, form=form, my_ip=p.ip,
                   units=[u for u, _s, _n in DURATION_UNITS])


# ---- SCIM --------------------------------------------------------------------------------------------------
@bp.route("/w/<ws_slug>/admin/scim", methods=["GET", "POST"])
@admin_required
def scim(ws, p):
    svc = admin_service()
    errors: list[str] = []
    fe, status = FormErrors(), 200
    created = None
    if request.method == "POST":
        check_csrf()
        try:
            created = svc.create_scim_token(p, ws.slug, {"name": _form("name").strip(),
                                                         "read_only": bool(request.form.get("read_only"))})
            status = 201
        except AdminError as exc:
            fe, status = _errors(exc, SCIM_LABELS), exc.status
    log = svc.search_events(p, ws.slug, type="scim.*", limit=50)["items"]
    page = _listing(errors, svc.list_scim_tokens, p, ws.slug)
    return _render("scim.html", ws, status if status != 200 or not errors else 400, page=page,
                   tokens=page["items"], created=created, errors=errors, fe=fe, form=request.form if fe else {},
                   log=log)


@bp.route("/w/<ws_slug>/admin/scim/<token_id>/revoke", methods=["POST"])
@admin_required
def scim_revoke(ws, p, token_id):
    check_csrf()
    svc = admin_service()
    if not _confirmed():
        tokens = svc.list_scim_tokens(p, ws.slug, limit=200)["items"]
        t = next((t for t in tokens if t["id"] == token_id), None)
        if t is None:
            raise AdminError(404, "not_found", "no such SCIM token")
        return _confirm_page(ws, f"Revoke {t['name']}", f"Revoke the SCIM token {t['name']}?",
                             ["The identity provider that uses it can no longer create, change or deactivate "
                              "accounts and groups here: provisioning stops until it has a new token.",
                              "A revoked token cannot be used again."],
                             "Revoke token", url_for("admin_console.scim", ws_slug=ws.slug))
    svc.revoke_scim_token(p, ws.slug, token_id)
    flash("The SCIM token was revoked.", "status")
    return redirect(url_for("admin_console.scim", ws_slug=ws.slug))


# ---- signing keys --------------------------------------------------------------------------------------------
@bp.route("/w/<ws_slug>/admin/keys")
@admin_required
def keys(ws, p):
    svc = admin_service()
    log = sorted((e for prefix in ("oidc.key*", "saml.key*")
                  for e in svc.search_events(p, ws.slug, type=prefix, limit=20)["items"]),
                 key=lambda e: e["seq"], reverse=True)[:20]
    return _render("keys.html", ws, keys=svc.list_signing_keys(p, ws.slug)["items"], log=log)


@bp.route("/w/<ws_slug>/admin/keys/<key_id>/revoke", methods=["POST"])
@admin_required
def key_revoke(ws, p, key_id):
    check_csrf()
    done = admin_service().revoke_signing_key(p, ws.slug, key_id)
    flash(f"The signing key {done['revoked'][:16]}… was revoked on every server"
          + (f"; {done['signing'][:16]}… signs from now on." if done["signing"] else "."), "status")
    return redirect(url_for("admin_console.keys", ws_slug=ws.slug))


# ---- audit log ---------------------------------------------------------------------------------------------
AUDIT_TEXT = ("type", "actor", "user", "app", "outcome", "since", "until")


def _audit_query() -> dict:
    """The audit page's filters as given (what the form shows again, and what its links carry)."""
    q: dict = {k: request.args.get(k, "")[:320] for k in AUDIT_TEXT}
    q["kind"] = [k[:32] for k in request.args.getlist("kind")[:20] if k]
    q["decisions"] = "1" if request.args.get("decisions") else ""
    return q


def _audit_filters(q: dict) -> dict:
    """The filters for ``AdminService``: the date inputs send YYYY-MM-DD (the start of that day, UTC); a date
    for "until" means up to the end of that day."""
    args = {k: q[k] or None for k in AUDIT_TEXT}
    for k in ("since", "until"):
        value = args.get(k)
        if value and len(value) == 10:
            args[k] = value + "T00:00:00Z"
            if k == "until":
                try:
                    day = datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
                    args[k] = (day + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
                except ValueError:
                    pass  # refused, naming the field, by the service
                except OverflowError:
                    args[k] = value + "T00:00:00Z"
    args["kind"] = q["kind"]
    args["decisions"] = bool(q["decisions"])
    return args


def _link_args(q: dict) -> dict:
    """The filters as URL arguments (empty ones left out), for the pager and the export links."""
    return {k: v for k, v in q.items() if v}


def _audit_page(ws, p, errors: list[str], page: dict | None = None):
    if page is None:
        page = {"items": [], "next_before": None}
    q = _audit_query()
    try:
        apps = admin_service().audit_apps(p, ws.slug)
    except AdminError:
        apps = []
    user_email = None
    if q["user"] and ID_RE.match(q["user"].strip()):  # the user page's link: say whose events these are
        try:
            user_email = admin_service().get_user(p, ws.slug, q["user"].strip())["email"]
        except AdminError:
            user_email = None
    return _render("audit.html", ws, 400 if errors else 200, page=page, errors=errors, filters=q, user_email=user_email,
                   link_args=_link_args(q), kinds=KINDS, outcomes=OUTCOMES, apps=apps,
                   paged=bool(request.args.get("before")))


@bp.route("/w/<ws_slug>/admin/audit")
@admin_required
def audit(ws, p):
    try:
        page = admin_service().search_events(p, ws.slug, limit=50, before=request.args.get("before") or None,
                                             **_audit_filters(_audit_query()))
    except AdminError as exc:
        return _audit_page(ws, p, [_error_text(exc)])
    return _audit_page(ws, p, [], page)


@bp.route("/w/<ws_slug>/admin/audit/export")
@admin_required
def audit_export(ws, p):
    fmt = request.args.get("format", "csv")
    try:
        chunks = admin_service().export_events(p, ws.slug, fmt=fmt, **_audit_filters(_audit_query()))
    except AdminError as exc:  # shown on the audit page, with the filters as given
        return _audit_page(ws, p, [_error_text(exc)])
    resp = Response(chunks, mimetype="text/csv" if fmt == "csv" else "application/json")
    resp.headers["Content-Disposition"] = f'attachment; filename="audit-{ws.slug}.{fmt}"'
    resp.headers["Cache-Control"] = "no-store"
    return resp
