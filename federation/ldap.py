"""LDAP / Active Directory connections (ldap3): bind authentication, user and group lookup.

Sign-in: refuse an empty password before any network traffic (an empty simple bind is an anonymous bind that
"succeeds"); bind as the service account (``bind_dn``/``bind_password``); find exactly one entry under
``user_search_base`` with ``user_filter`` where ``{username}`` is replaced by the escaped username
(``escape_filter_chars``); bind as that entry's DN with the password on a fresh connection; read groups from
``memberOf`` and/or a group search under ``group_search_base``. StartTLS (``start_tls``) or ``ldaps://`` with
certificate validation against ``ca_file`` (or the system store). Connect and receive timeouts are bounded.

A connection registered over the admin API or console (``federation.config.guarded``) reaches its server through
``idp.netfetch``'s checks: the host is resolved once per sign-in (or test), every address must be public unless
``IDHUB_OUTBOUND_ALLOW_CIDRS`` allows it, and ldap3 connects to exactly the checked address, so DNS rebinding
cannot swap it; TLS (ldaps or StartTLS) still sends the configured host name as SNI and verifies the certificate
against it, never against the address. A refusal is ``unavailable`` before any packet is sent (no password
leaves). Config-file connections (the trusted operator) connect as configured.

The subject is ``entryUUID`` (OpenLDAP), ``objectGUID`` (Active Directory) or, if neither, the DN.
Failures raise :class:`UpstreamError` with check ``bind`` (wrong/unknown/ambiguous user or password, the same
for all so nothing is enumerated), ``unavailable`` (server down, TLS failure, timeout) or ``config``.
"""

from __future__ import annotations

import logging
import ssl
import uuid
from urllib.parse import urlsplit

import ldap3
from ldap3.core import exceptions as lx
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import parse_dn

from federation import presets
from federation.base import UpstreamError, UpstreamIdentity
from federation.config import guarded

log = logging.getLogger("idhub.federation.ldap")
DEFAULT_TIMEOUT = 5  # seconds, connect and each receive
MAX_USERNAME = 256
MAX_PASSWORD = 1024
DEFAULT_USER_FILTER = "(&(objectClass=person)(|(uid={username})(mail={username})))"
USER_ATTRS = ["entryUUID", "objectGUID", "mail", "cn", "displayName", "givenName", "sn", "memberOf", "uid",
              "sAMAccountName", "userPrincipalName"]
GROUP_FILTER = ("(&(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames)(objectClass=group))"
                "(|(member={dn})(uniqueMember={dn})))")

HINTS = {
    "bind": "The username or password was not accepted by the directory.",
    "unavailable": "idhub cannot reach the directory: check url, port, firewall, and the TLS settings "
                   "(start_tls, ca_file).",
    "config": "Check the LDAP connection settings (url, bind_dn, bind_password, user_search_base, user_filter).",
    "service_bind": "The service account (bind_dn / bind_password) was refused by the directory.",
}
_UNAVAILABLE = (lx.LDAPSocketOpenError, lx.LDAPSocketReceiveError, lx.LDAPSocketSendError,
                lx.LDAPSessionTerminatedByServerError, lx.LDAPStartTLSError, lx.LDAPCommunicationError,
                lx.LDAPResponseTimeoutError, lx.LDAPSSLConfigurationError, lx.LDAPMaximumRetriesError,
                lx.LDAPServerPoolExhaustedError, ssl.SSLError, OSError)


def _fail(check: str, message: str) -> UpstreamError:
    return UpstreamError(check, message, HINTS.get(check, ""))


def _timeout(conn: dict) -> int:
    t = conn.get("timeout", DEFAULT_TIMEOUT)
    return t if isinstance(t, int) and not isinstance(t, bool) and 1 <= t <= 60 else DEFAULT_TIMEOUT


class _PinnedTls(ldap3.Tls):
    """TLS for a server reached at a checked address rather than by its name: Python's own certificate and host
    name check (``check_hostname``) against the configured ``host``, also sent as SNI. ldap3's own check would
    also accept a certificate for the address; this one never does."""

    def __init__(self, host: str, ca_file: str | None):
        super().__init__(validate=ssl.CERT_REQUIRED, version=ssl.PROTOCOL_TLS_CLIENT, ca_certs_file=ca_file,
                         valid_names=[host], sni=host)
        self.host = host

    def wrap_socket(self, connection, do_handshake=False):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
        if self.ca_certs_file:
            ctx.load_verify_locations(self.ca_certs_file)
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        connection.socket = ctx.wrap_socket(connection.socket, server_side=False, server_hostname=self.host,
                                            do_handshake_on_connect=do_handshake)


def _checked_address(conn: dict, host: str, port: int) -> str:
    """A guarded connection's server address: ``host`` resolved once and checked by ``idp.netfetch`` (the
    allow-list read now). A refusal is ``unavailable``, logged and raised before anything is sent."""
    from idp import netfetch

    try:
        return netfetch.address(host, port, "url", timeout=_timeout(conn))
    except netfetch.FetchError as exc:
        log.warning("LDAP server refused by the outbound checks", extra={"connection": conn.get("slug"),
                                                                          "reason": exc.reason})
        raise UpstreamError("unavailable", f"{exc}; idhub did not connect (nothing was sent)",
                            "idhub connects only to public addresses for directories added in the admin console or "
                            f"API; the operator can allow internal networks with {netfetch.ALLOW_ENV}.") from None


def _server(conn: dict) -> ldap3.Server:
    url = conn.get("url") or ""
    parts = urlsplit(url)
    if parts.scheme not in ("ldap", "ldaps") or not parts.hostname:
        raise _fail("config", "url must be ldap://host[:port] or ldaps://host[:port]")
    use_ssl = parts.scheme == "ldaps"
    if use_ssl and conn.get("start_tls"):
        raise _fail("config", "use either ldaps:// or start_tls, not both")
    try:
        port = parts.port or (636 if use_ssl else 389)
    except ValueError:
        raise _fail("config", "url has an invalid port") from None
    if guarded(conn):  # an admin chose the server: the checked address only, TLS on the configured name
        ip = _checked_address(conn, parts.hostname, port)
        tls = None
        if use_ssl or conn.get("start_tls"):
            try:
                tls = _PinnedTls(parts.hostname, conn.get("ca_file") or None)
            except lx.LDAPSSLConfigurationError as e:
                raise _fail("config", f"TLS settings: {e}") from None
        return ldap3.Server(ip, port=port, use_ssl=use_ssl, tls=tls, get_info=ldap3.NONE,
                            connect_timeout=_timeout(conn))
    tls = None
    if use_ssl or conn.get("start_tls"):
        try:
            tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, version=ssl.PROTOCOL_TLS_CLIENT,
                            ca_certs_file=conn.get("ca_file") or None, valid_names=[parts.hostname])
        except lx.LDAPSSLConfigurationError as e:
            raise _fail("config", f"TLS settings: {e}") from None
    return ldap3.Server(parts.hostname, port=port, use_ssl=use_ssl, tls=tls, get_info=ldap3.NONE,
                        connect_timeout=_timeout(conn))


def _open(conn: dict, server: ldap3.Server, user: str | None, password: str | None) -> ldap3.Connection:
    """Open, StartTLS when asked, and bind. Returns a bound connection; raises UpstreamError otherwise."""
    if user is not None and not password:
        raise _fail("bind", "refusing a bind with an empty password")  # would be an unauthenticated bind
    c = ldap3.Connection(server, user=user, password=password,
                         authentication=ldap3.SIMPLE if user is not None else ldap3.ANONYMOUS,
                         auto_bind=ldap3.AUTO_BIND_NONE, receive_timeout=_timeout(conn), read_only=True,
                         raise_exceptions=False, auto_referrals=False)
    try:
        c.open()
        if conn.get("start_tls") and not c.start_tls():
            c.unbind()
            raise _fail("unavailable", "StartTLS failed")
        ok = c.bind()
    except _UNAVAILABLE as e:
        raise _fail("unavailable", f"cannot reach the directory: {type(e).__name__}") from None
    if not ok:
        result = (c.result or {}).get("description", "")
        try:
            c.unbind()
        except _UNAVAILABLE:
            pass
        if result in ("invalidCredentials", "inappropriateAuthentication", "unwillingToPerform"):
            raise _fail("bind", f"the directory refused the bind ({result})")
        if result in ("busy", "unavailable", ""):
            raise _fail("unavailable", f"the directory is not available ({result or 'no answer'})")
        raise _fail("bind", f"the directory refused the bind ({result})")
    return c


def _service(conn: dict, server: ldap3.Server) -> ldap3.Connection:
    bind_dn = conn.get("bind_dn") or None
    if bind_dn is not None and not conn.get("bind_password"):
        raise _fail("config", "bind_dn is set without bind_password")
    try:
        return _open(conn, server, bind_dn, conn.get("bind_password") or None)
    except UpstreamError as e:
        if e.check == "bind":
            raise UpstreamError("service_bind", "the directory refused the service account", HINTS["service_bind"]) \
                from None
        raise


def _filter(conn: dict, username: str) -> str:
    template = conn.get("user_filter") or DEFAULT_USER_FILTER
    if "{username}" not in template or not (template.startswith("(") and template.endswith(")")):
        raise _fail("config", "user_filter must be an LDAP filter containing {username}")
    return template.replace("{username}", escape_filter_chars(username))


def _valid_username(username) -> bool:
    return (isinstance(username, str) and 0 < len(username) <= MAX_USERNAME and username == username.strip()
            and not any(ord(ch) < 32 or ord(ch) == 127 for ch in username))


def _first(entry: dict, name: str):
    v = entry.get(name)
    if isinstance(v, list):
        return v[0] if v else None
    return v


def _subject(attrs: dict, dn: str) -> str:
    v = _first(attrs, "entryUUID")
    if v:
        return str(v)
    guid = _first(attrs, "objectGUID")
    if isinstance(guid, bytes) and len(guid) == 16:
        return str(uuid.UUID(bytes_le=guid))
    if isinstance(guid, str) and guid:
        return guid.strip("{}")
    return dn


def _cn(dn: str) -> str:
    try:
        rdn = parse_dn(dn, escape=False)[0]
        return rdn[1] or dn
    except (lx.LDAPInvalidDnError, IndexError):
        return dn


def _search(c: ldap3.Connection, base: str, flt: str, attrs, size_limit: int) -> list[dict]:
    try:
        c.search(base, flt, search_scope=ldap3.SUBTREE, attributes=attrs, size_limit=size_limit,
                 time_limit=DEFAULT_TIMEOUT)
    except _UNAVAILABLE as e:
        raise _fail("unavailable", f"the directory stopped answering: {type(e).__name__}") from None
    except lx.LDAPException as e:
        raise _fail("config", f"the search failed: {type(e).__name__}") from None
    desc = (c.result or {}).get("description", "")
    if desc not in ("success", "sizeLimitExceeded"):
        if desc == "noSuchObject":
            raise _fail("config", f"the search base {base!r} does not exist")
        raise _fail("config", f"the search failed ({desc})")
    if desc == "sizeLimitExceeded":
        return [{}] * (size_limit + 1)
    return [{"dn": e["dn"], "attributes": dict(e["attributes"])}
            for e in c.response or [] if e.get("type") == "searchResEntry"]


def _groups(conn: dict, c: ldap3.Connection, dn: str, attrs: dict) -> list[str]:
    names: list[str] = []
    for g in attrs.get("memberOf") or []:
        n = _cn(str(g))
        if n not in names:
            names.append(n)
    base = conn.get("group_search_base")
    if base:
        for e in _search(c, base, GROUP_FILTER.replace("{dn}", escape_filter_chars(dn)), ["cn"], 1000):
            n = _first(e.get("attributes", {}), "cn") or _cn(e.get("dn", ""))
            if n and n not in names:
                names.append(str(n))
    return names


def authenticate(conn: dict, username: str, password: str) -> UpstreamIdentity:
    """Check a username and password against the directory; return the person, or raise UpstreamError."""
    if not isinstance(password, str) or not password:
        raise _fail("bind", "an empty password is never sent to the directory")
    if len(password) > MAX_PASSWORD or "\x00" in password:
        raise _fail("bind", "the password is not acceptable")
    if not _valid_username(username):
        raise _fail("bind", "the username is not acceptable")
    base = conn.get("user_search_base")
    if not base:
        raise _fail("config", "user_search_base is not set")
    flt = _filter(conn, username)
    server = _server(conn)
    svc = _service(conn, server)
    try:
        found = _search(svc, base, flt, USER_ATTRS, 2)
        if len(found) != 1:
            raise _fail("bind", "no such user" if not found else "the username matches several entries")
        dn, attrs = found[0]["dn"], found[0]["attributes"]
        user_conn = _open(conn, server, dn, password)
        try:
            user_conn.unbind()
        except _UNAVAILABLE:
            pass
        groups = _groups(conn, svc, dn, attrs)
    finally:
        try:
            svc.unbind()
        except _UNAVAILABLE:
            pass

    claims: dict = {"dn": dn}
    for k, v in attrs.items():
        if isinstance(v, bytes):
            v = v.hex()
        elif isinstance(v, list):
            v = [x.hex() if isinstance(x, bytes) else str(x) for x in v]
        if v not in ([], "", None):
            claims[k] = v
    subject = _subject(attrs, dn)
    base_claims = {"sub": subject, "email": _first(attrs, "mail") or "", "given_name": _first(attrs, "givenName"),
                   "family_name": _first(attrs, "sn"), "name": _first(attrs, "displayName") or _first(attrs, "cn"),
                   "groups": groups}
    raw = {k: v for k, v in claims.items() if k not in ("memberOf", "isMemberOf")}  # groups come from _groups
    mapped = presets.map_claims("generic", {**raw, **{k: v for k, v in base_claims.items() if v}},
                                conn.get("attribute_map") or None)
    claims["groups"] = groups
    return UpstreamIdentity(subject=mapped["subject"], email=mapped["email"], name=mapped["name"],
                            given_name=mapped["given_name"], family_name=mapped["family_name"],
                            groups=tuple(mapped["groups"]), amr=("pwd",), mfa=False, claims=claims)


def test_connection(conn: dict) -> list[tuple[str, bool, str]]:
    """For the admin "Test connection" page: (check, ok, detail) per step, stopping at the first failure."""
    results: list[tuple[str, bool, str]] = []
    try:
        server = _server(conn)
    except UpstreamError as e:  # a bad url, or a server the outbound checks refuse (with what to do about it)
        return [("config", False, e.message if e.check == "config" else f"{e.message}. {e.hint}")]
    shown = f"{urlsplit(conn.get('url') or '').hostname}:{server.port}"
    results.append(("config", True, shown + (f" (checked address {server.host})" if guarded(conn) else "")))
    try:
        svc = _service(conn, server)
    except UpstreamError as e:
        return [*results, (e.check, False, f"{e.message}. {e.hint}")]
    tls = "ldaps" if server.ssl else ("StartTLS" if conn.get("start_tls") else "none (plain LDAP)")
    results.append(("connect", True, f"connected, TLS: {tls}"))
    results.append(("service_bind", True, "bound as " + (conn.get("bind_dn") or "anonymous")))
    try:
        for key in ("user_search_base", "group_search_base"):
            base = conn.get(key)
            if not base:
                if key == "user_search_base":
                    results.append((key, False, "not set"))
                continue
            try:
                found = _search(svc, base, "(objectClass=*)", ["objectClass"], 50)
                results.append((key, True, f"{base}: {min(len(found), 50)}{'+' if len(found) > 50 else ''} entries"))
            except UpstreamError as e:
                results.append((key, False, e.message))
        try:
            _filter(conn, "x")
            results.append(("user_filter", True, conn.get("user_filter") or DEFAULT_USER_FILTER))
        except UpstreamError as e:
            results.append(("user_filter", False, e.message))
    finally:
        try:
            svc.unbind()
        except _UNAVAILABLE:
            pass
    return results
