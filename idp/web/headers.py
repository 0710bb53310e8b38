"""The security headers of idhub's pages (set by the app factory; a page that posts to another origin, such as
SAML's auto-submitting form, widens ``form-action`` for itself)."""

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'"
)
