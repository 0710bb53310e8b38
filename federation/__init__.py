"""Upstream identity providers: Okta and Azure AD over SAML 2.0 and OpenID Connect, and LDAP/Active Directory.

Protocol modules (``saml_sp``, ``oidc_rp``, ``ldap``) are plain Python: they take a connection's settings
and the upstream's answer, and return an :class:`federation.base.UpstreamIdentity` or raise
:class:`federation.base.UpstreamError`. Only ``federation.web`` imports Flask.
"""
