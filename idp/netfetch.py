"""SSRF-safe outbound HTTP for URLs that a workspace admin chose (admin API and console): SAML metadata URLs, the
OIDC endpoints of connections registered over the API, and, for apps registered over the API, an OIDC client's
``jwks_uri`` and ``backchannel_logout_uri`` and a SAML SP's SOAP SingleLogoutService. Plain Python on urllib3, no
Flask. The same checks for any host and port (:func:`check_host`, :func:`address`) guard the LDAP servers of
connections registered over the API (``federation.ldap`` connects to the address they return).

A fetch parses the URL (https; plain http only to a loopback host name, as for the config file), resolves the host
**once**, refuses it when any address it resolves to is not a public unicast address — loopback, private (RFC 1918,
ULA ``fc00::/7``), link-local (``169.254.0.0/16`` with the cloud metadata services, ``fe80::/10``), shared/CGNAT
(``100.64.0.0/10``), multicast, unspecified, reserved, and IPv4-mapped, IPv4-compatible, 6to4 and NAT64 forms of
those — and then connects to exactly the address it checked (no second DNS look-up: DNS rebinding cannot swap
it), sending the host name as ``Host`` and as TLS SNI and verifying the certificate against the host name. No
redirects (a 3xx is an error naming it), one deadline for the whole fetch (DNS, connect, every read), a byte limit.
Every failure is a :class:`FetchError` (a ``ValueError``) whose message names the field and what was wrong::

    metadata_url: resolves to a private address (10.0.0.5)

Deployments whose metadata, key or logout endpoints are on the internal network list those networks in
``IDHUB_OUTBOUND_ALLOW_CIDRS`` (comma-separated CIDRs, read at every fetch): an address in one of them is accepted
even though it would otherwise be refused. The config file (``idhub apply``, the trusted operator) does not go
through here."""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

ALLOW_ENV = "IDHUB_OUTBOUND_ALLOW_CIDRS"
DEFAULT_TIMEOUT = 10.0  # seconds for the whole fetch
DEFAULT_LIMIT = 1024 * 1024  # bytes
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")  # plain http is accepted to these host names only
_SHARED = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class FetchError(ValueError):
    """A refused or failed fetch: ``field`` (the setting that named the URL) and ``reason`` for people."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


@dataclass(frozen=True)
class Target:
    """Where a checked URL is fetched from: ``ip`` is the address that passed the checks (the only one used)."""

    scheme: str
    host: str  # the host name (IDNA, lower case, no brackets): Host header, SNI, certificate check
    port: int
    ip: str
    path: str  # path and query
    host_header: str


# ---- addresses ------------------------------------------------------------------------------------------------
def parse_allow(value: str | None) -> tuple[Network, ...]:
    """``IDHUB_OUTBOUND_ALLOW_CIDRS``: comma-separated CIDRs (``ValueError`` naming a bad one)."""
    nets = []
    for part in (value or "").split(","):
        part = part.strip()
        if part:
            try:
                nets.append(ipaddress.ip_network(part, strict=True))
            except ValueError as exc:
                raise ValueError(f"{ALLOW_ENV}: {part!r} is not a valid CIDR ({exc})") from None
    return tuple(nets)


def allowed_networks(env: dict | None = None) -> tuple[Network, ...]:
    return parse_allow((os.environ if env is None else env).get(ALLOW_ENV))


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (IPv4-mapped, 6to4, NAT64, IPv4-compatible), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if any(ip in n for n in _NAT64) or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def refusal(ip: Address | str) -> str | None:
    """Why an outbound connection to ``ip`` is refused ("a private address", …), or ``None`` for a public unicast
    address."""
    ip = ipaddress.ip_address(ip)
    if ip.version == 6:
        inner = _embedded_v4(ip)
        if inner is not None and (why := refusal(inner)):
            return why
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.version == 4 and ip in _SHARED:
        return "a shared (carrier-grade NAT) address"
    if ip.is_reserved:
        return "a reserved address"
    if ip.is_private:
        return "a private address"
    if not ip.is_global:
        return "a non-public address"
    return None


def _allowed(ip: Address, nets: tuple[Network, ...]) -> bool:
    candidates = [ip]
    if ip.version == 6 and (inner := _embedded_v4(ip)) is not None:
        candidates.append(inner)
    return any(c in n for c in candidates for n in nets if n.version == c.version)


def check_address(ip: Address | str, field: str, *, allow: tuple[Network, ...] | None = None,
                  verb: str = "resolves to") -> None:
    ip = ipaddress.ip_address(ip)
    why = refusal(ip)
    if why is None:
        return
    if allow is None:
        try:
            allow = allowed_networks()
        except ValueError as exc:
            raise FetchError(field, f"{exc}; nothing is fetched") from None
    if not _allowed(ip, allow):
        raise FetchError(field, f"{verb} {why} ({ip})")


# ---- URLs -----------------------------------------------------------------------------------------------------
def _split(url, field: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path-and-query) of an http(s) URL, or ``FetchError``."""
    if not isinstance(url, str) or not url or len(url) > 2048 or any(ord(c) <= 0x20 or c == "\x7f" for c in url):
        raise FetchError(field, "not a usable URL")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise FetchError(field, "not a usable URL") from None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").rstrip(".")
    if scheme not in ("https", "http") or not host:
        raise FetchError(field, "must be an https URL")
    if parts.username is not None or parts.password is not None:
        raise FetchError(field, "must be a URL without credentials")
    if scheme == "http" and host not in LOOPBACK_NAMES:
        raise FetchError(field, "must use https (plain http only to 127.0.0.1, ::1 or localhost)")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        try:
            host = host.encode("idna").decode("ascii").lower()
        except UnicodeError:
            raise FetchError(field, "not a valid host name") from None
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return scheme, host, port or (443 if scheme == "https" else 80), path


def _literal(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def check_literal(url, field: str, *, allow: tuple[Network, ...] | None = None) -> None:
    """Without any DNS look-up: refuse a URL whose host is a refused IP literal or ``localhost`` (what an admin
    types to reach an internal service). Host names are checked when they are fetched."""
    _scheme, host, _port, _path = _split(url, field)
    check_host(host, field, allow=allow)


def check_host(host: str, field: str, *, allow: tuple[Network, ...] | None = None) -> None:
    """:func:`check_literal` for a bare host name or address (no brackets), e.g. an LDAP server's: a refused IP
    literal or ``localhost`` is a ``FetchError``; other names are checked by :func:`address` when connected to."""
    host = (host or "").rstrip(".").lower()
    ip = ipaddress.ip_address("127.0.0.1") if host == "localhost" else _literal(host)
    if ip is not None:
        check_address(ip, field, allow=allow, verb="points to" if host != "localhost" else "resolves to")


def _resolve(host: str, port: int, field: str, resolver, timeout: float) -> list[Address]:
    """The host's addresses, from one call of ``resolver`` (``socket.getaddrinfo``'s signature), within
    ``timeout`` seconds."""
    result: dict = {}

    def run():
        try:
            result["infos"] = resolver(host, port, 0, socket.SOCK_STREAM)
        except Exception as exc:  # noqa: BLE001 - reported below, whatever the resolver raised
            result["error"] = exc

    worker = threading.Thread(target=run, name="idhub-netfetch-dns", daemon=True)
    worker.start()
    worker.join(max(timeout, 0.01))
    if worker.is_alive():
        raise FetchError(field, f"resolving {host} took too long")
    if "error" in result:
        raise FetchError(field, f"{host} does not resolve")
    ips: list[Address] = []
    for info in result.get("infos") or []:
        try:
            ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        except (IndexError, TypeError, ValueError):
            continue
        if ip not in ips:
            ips.append(ip)
    if not ips:
        raise FetchError(field, f"{host} does not resolve")
    return ips


def address(host: str, port: int, field: str, *, resolver=None, allow: tuple[Network, ...] | None = None,
            timeout: float = DEFAULT_TIMEOUT) -> str:
    """Resolve ``host`` (a name, or an IP literal without brackets) once, within ``timeout`` seconds: every
    address must pass :func:`check_address` (``IDHUB_OUTBOUND_ALLOW_CIDRS`` read now unless ``allow`` is given).
    Returns the first one, the only address to connect to (for any protocol: HTTP here, LDAP in
    ``federation.ldap``); ``FetchError`` otherwise."""
    if allow is None:
        try:
            allow = allowed_networks()
        except ValueError as exc:
            raise FetchError(field, f"{exc}; nothing is fetched") from None
    literal = _literal(host)
    if literal is not None:
        ips = [literal]
    else:
        if not host:
            raise FetchError(field, "not a valid host name")
        ips = _resolve(host, port, field, resolver or socket.getaddrinfo, timeout)
    for ip in ips:
        check_address(ip, field, allow=allow, verb="points to" if literal is not None else "resolves to")
    return str(ips[0])


def target(url, field: str, *, resolver=None, allow: tuple[Network, ...] | None = None,
           timeout: float = DEFAULT_TIMEOUT) -> Target:
    """Check ``url`` and resolve its host once (:func:`address`): every address must pass
    :func:`check_address`; the first one is the address the fetch connects to."""
    scheme, host, port, path = _split(url, field)
    ip = address(host, port, field, resolver=resolver, allow=allow, timeout=timeout)
    shown = f"[{host}]" if ":" in host else host
    default = 443 if scheme == "https" else 80
    return Target(scheme, host, port, ip, path, shown if port == default else f"{shown}:{port}")


# ---- connections ----------------------------------------------------------------------------------------------
def ca_bundle() -> str | None:
    """The CA certificates to verify servers with: ``REQUESTS_CA_BUNDLE`` or ``SSL_CERT_FILE`` (as for requests),
    else certifi's, else the system's."""
    for name in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        if os.environ.get(name):
            return os.environ[name]
    try:
        import certifi
    except ImportError:  # pragma: no cover - certifi comes with requests
        return None
    return certifi.where()


def pool(t: Target, *, timeout: float = DEFAULT_TIMEOUT, ca_certs: str | None = None):
    """A urllib3 connection pool to the checked address ``t.ip`` only; for https the certificate is verified
    against ``t.host``, which is also sent as SNI."""
    import urllib3

    tmo = urllib3.Timeout(connect=timeout, read=timeout)
    if t.scheme == "https":
        return urllib3.HTTPSConnectionPool(t.ip, t.port, timeout=tmo, maxsize=1, retries=False,
                                           cert_reqs="CERT_REQUIRED", ca_certs=ca_certs or ca_bundle(),
                                           server_hostname=t.host, assert_hostname=t.host)
    return urllib3.HTTPConnectionPool(t.ip, t.port, timeout=tmo, maxsize=1, retries=False)


def _failure(exc: Exception, t: Target, field: str) -> FetchError:
    from urllib3 import exceptions as e

    if isinstance(exc, e.SSLError):
        return FetchError(field, f"the TLS connection to {t.host} failed (certificate not valid for {t.host}, or "
                          "not trusted)")
    if isinstance(exc, e.ConnectTimeoutError | e.ReadTimeoutError | TimeoutError | socket.timeout):
        return FetchError(field, "took too long")
    if isinstance(exc, e.NewConnectionError | ConnectionRefusedError):
        return FetchError(field, f"could not connect to {t.host} ({t.ip} port {t.port})")
    return FetchError(field, f"could not be fetched ({type(exc).__name__})")


def fetch(url, *, field: str = "url", timeout: float = DEFAULT_TIMEOUT, limit: int = DEFAULT_LIMIT,
          accept: str = "*/*", headers: dict | None = None, resolver=None,
          allow: tuple[Network, ...] | None = None, ca_certs: str | None = None) -> bytes:
    """GET ``url`` (checked and pinned as described above) and return its body: status 200 only, no redirects,
    at most ``limit`` bytes, all within ``timeout`` seconds. ``FetchError`` otherwise."""
    return _exchange("GET", url, None, field=field, timeout=timeout, limit=limit, accept=accept, headers=headers,
                     resolver=resolver, allow=allow, ca_certs=ca_certs, statuses=(200,))


def post(url, body: bytes, *, field: str = "url", content_type: str = "application/x-www-form-urlencoded",
         timeout: float = DEFAULT_TIMEOUT, limit: int = DEFAULT_LIMIT, accept: str = "*/*",
         headers: dict | None = None, resolver=None, allow: tuple[Network, ...] | None = None,
         ca_certs: str | None = None) -> bytes:
    """POST ``body`` to ``url`` (checked and pinned as :func:`fetch` does: resolved once, internal addresses refused
    unless allow-listed, connected to the checked address, no redirects, one deadline) and return the answer's
    body (at most ``limit`` bytes): any 2xx status; ``FetchError`` otherwise (back-channel logout: OIDC logout
    tokens, SAML SOAP LogoutRequests)."""
    return _exchange("POST", url, body, field=field, timeout=timeout, limit=limit, accept=accept,
                     headers={"Content-Type": content_type, **(headers or {})}, resolver=resolver, allow=allow,
                     ca_certs=ca_certs, statuses=tuple(range(200, 300)))


def _exchange(method: str, url, body: bytes | None, *, field: str, timeout: float, limit: int, accept: str,
              headers: dict | None, resolver, allow, ca_certs, statuses: tuple[int, ...]) -> bytes:
    deadline = time.monotonic() + timeout
    t = target(url, field, resolver=resolver, allow=allow, timeout=timeout)

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise FetchError(field, "took too long")
        return left

    p = pool(t, timeout=remaining(), ca_certs=ca_certs)
    sent = {"Accept": accept, "Accept-Encoding": "identity", "User-Agent": "idhub", **(headers or {}),
            "Host": t.host_header}
    if body is not None:
        sent["Content-Length"] = str(len(body))
    resp = None
    try:
        resp = p.urlopen(method, t.path, body=body, headers=sent, redirect=False, retries=False,
                         preload_content=False, assert_same_host=False)
        if 300 <= resp.status < 400:
            raise FetchError(field, f"redirected (HTTP {resp.status}); give the final URL")
        if resp.status not in statuses:
            raise FetchError(field, f"answered HTTP {resp.status}")
        declared = resp.headers.get("Content-Length", "")
        if declared.strip().isdigit() and int(declared) > limit:
            raise FetchError(field, f"the document is too large (more than {limit} bytes)")
        chunks, size = [], 0
        while True:
            sock = getattr(getattr(resp, "connection", None), "sock", None)
            if sock is not None:
                sock.settimeout(remaining())  # every read within the one deadline
            chunk = resp.read1(65536)
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise FetchError(field, f"the document is too large (more than {limit} bytes)")
            chunks.append(chunk)
            remaining()
        return b"".join(chunks)
    except FetchError:
        raise
    except Exception as exc:  # noqa: BLE001 - urllib3/socket/TLS errors of every kind: a FetchError, never a 500
        raise _failure(exc, t, field) from None
    finally:
        if resp is not None:
            resp.close()
        p.close()


# ---- requests -------------------------------------------------------------------------------------------------
def guarded_session(field: str = "url", *, resolver=None, allow: tuple[Network, ...] | None = None):
    """A ``requests.Session`` whose every request (redirects refused) goes through the checks and the pinning
    above: for libraries that take a session (authlib's token request)."""
    import requests

    s = requests.Session()
    s.trust_env = False  # no proxies from the environment: the checked address is the one connected to
    adapter = GuardedAdapter(field, resolver=resolver, allow=allow)
    s.mount("https://", adapter)
    s.mount("http://", adapter)
    return s


def _adapter_class():
    from requests.adapters import HTTPAdapter

    class _GuardedAdapter(HTTPAdapter):
        """A requests transport adapter that resolves, checks and pins like :func:`fetch`."""

        def __init__(self, field: str = "url", *, resolver=None, allow=None):
            super().__init__(max_retries=0)
            self.field, self.resolver, self.allow = field, resolver, allow

        def get_connection_with_tls_context(self, request, verify, proxies=None, cert=None):
            t = target(request.url, self.field, resolver=self.resolver, allow=self.allow)
            request.headers["Host"] = t.host_header
            return pool(t, ca_certs=verify if isinstance(verify, str) else None)

        def cert_verify(self, conn, url, verify, cert):
            super().cert_verify(conn, url, verify if isinstance(verify, str) else True, cert)  # never unverified

        def request_url(self, request, proxies):
            return request.path_url

        def send(self, request, **kwargs):
            kwargs["proxies"] = {}
            resp = super().send(request, **kwargs)
            if resp.is_redirect or 300 <= resp.status_code < 400:
                resp.close()
                raise FetchError(self.field, f"redirected (HTTP {resp.status_code}); give the final URL")
            return resp

    return _GuardedAdapter


def GuardedAdapter(field: str = "url", *, resolver=None, allow=None):  # noqa: N802 - a class, built lazily
    return _adapter_class()(field, resolver=resolver, allow=allow)
