"""The client's address: ``X-Forwarded-For`` is believed only from configured proxies (never by default)."""

from __future__ import annotations

import ipaddress


class UntrustedAddress(ValueError):
    """The forwarding header from a trusted proxy could not be parsed; callers deny."""


def normalise_ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    ip = ipaddress.ip_address(value.strip())
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _trusted(ip, proxies) -> bool:
    return any(ip.version == net.version and ip in net for net in proxies)


def client_ip(remote_addr: str | None, forwarded_for: str | None, proxies) -> str:
    """Walk ``X-Forwarded-For`` from the right, skipping our own proxies; the first other hop is the client.

    Without trusted proxies, or when the peer is not one of them, the header is ignored entirely.
    """
    try:
        peer = normalise_ip(remote_addr or "")
    except ValueError as exc:
        raise UntrustedAddress("no peer address") from exc
    if not proxies or not _trusted(peer, proxies) or forwarded_for is None:
        return str(peer)
    if len(forwarded_for) > 2048:
        raise UntrustedAddress("X-Forwarded-For too long")
    hops = [h.strip() for h in forwarded_for.split(",")]
    addr = peer
    for hop in reversed(hops):
        try:
            addr = normalise_ip(hop)
        except ValueError as exc:
            raise UntrustedAddress("unparsable X-Forwarded-For") from exc
        if not _trusted(addr, proxies):
            return str(addr)
    return str(addr)
