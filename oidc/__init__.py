"""OpenID Connect: the downstream provider (``oidc.provider``, ``oidc.web``) for the workspace's apps."""

from __future__ import annotations


def install(hub):
    """Give the hub its OIDC service, the per-app policy look-up and the back-channel logout listener. Idempotent."""
    if getattr(hub, "oidc", None) is not None:
        return hub.oidc
    from idp.crypto import derive_key, secret_keys
    from idp.mfa.crypto import SecretBox
    from oidc.backchannel import BackchannelLogout
    from oidc.backchannel import install as install_backchannel
    from oidc.config import app_policy_lookup
    from oidc.provider import OidcService

    # the sid key is pinned to the oldest master idhub has had (kept across rotations): apps compare sids at logout
    svc = OidcService(hub, SecretBox(secret_keys(hub.settings), "oidc-keys"),
                      hub.keyring.pinned_key("oidc-sid") if getattr(hub, "keyring", None)
                      else derive_key(hub.settings.secret_key, "oidc-sid"))
    hub.oidc = svc
    hub.app_policy_lookups.append(app_policy_lookup(hub))
    svc.backchannel = BackchannelLogout(svc)
    install_backchannel(hub, svc.backchannel)
    access = getattr(hub, "app_access", None)
    if access is not None:  # who may use which app: the clients, and a lost app's tokens and sessions ended
        from oidc.config import assigned_apps

        access.readers.append(assigned_apps)
        access.revokers["oidc"] = lambda ws_id, user_id, app, why: svc.backchannel.client_logged_out(
            ws_id, user_id, app.key, why)
    if getattr(hub, "launcher", None) is not None:
        from oidc.config import launcher_entries
        hub.launcher.readers.append(launcher_entries(hub))
    accounts = getattr(hub, "accounts", None)
    if accounts is not None:  # deprovisioning revokes every grant of the account, whatever its session
        accounts.deprovision_listeners.append(svc.revoke_user)
    return svc
