"""SAML 2.0 identity provider for the workspace's downstream apps (``apps`` entries with ``protocol: saml``).

This package is the only one that imports ``lxml`` and ``xmlsec``; idhub never shells out to ``xmlsec1``.
"""

from __future__ import annotations


def install(hub):
    """Give the hub its SAML service and the per-app policy look-up. Idempotent."""
    if getattr(hub, "saml", None) is not None:
        return hub.saml
    from saml.config import app_policy_lookup
    from saml.idp import SamlIdp

    svc = SamlIdp(hub)
    hub.saml = svc
    hub.app_policy_lookups.append(app_policy_lookup(hub))
    hub.sessions.end_listeners.append(svc.slo.session_ended)
    if getattr(hub, "app_access", None) is not None:
        from saml.config import assigned_apps

        hub.app_access.readers.append(assigned_apps)
        hub.app_access.revokers["saml"] = svc.slo.app_lost  # the SP is told over SOAP where it can be
    if getattr(hub, "launcher", None) is not None:
        from saml.config import launcher_entries

        hub.launcher.readers.append(launcher_entries)
    return svc
