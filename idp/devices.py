"""Where and what a session is: the browser/OS/device behind a User-Agent, the place behind an IP address.

Plain Python, no Flask. Fingerprints (no versions) decide the "new device" / "new location" alerts.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import maxminddb
from ua_parser import parse

MAX_UA = 512
UNKNOWN_BROWSER = "Unknown browser"
UNKNOWN_LOCATION = "Unknown location"
# Families ua-parser reports for mobile builds, shown under their everyday names.
_BROWSER_NAMES = {
    "Mobile Safari": "Safari",
    "Mobile Safari UI/WKWebView": "In-app browser",
    "Chrome Mobile": "Chrome",
    "Chrome Mobile iOS": "Chrome",
    "Chrome Mobile WebView": "In-app browser",
    "Firefox Mobile": "Firefox",
    "Firefox iOS": "Firefox",
    "Edge Mobile": "Edge",
    "Samsung Internet": "Samsung Internet",
}
_OS_NAMES = {"Mac OS X": "macOS"}
_NAMED_DEVICES = {"iPhone", "iPad", "iPod"}  # shown instead of the OS: "Safari on iPhone"


@dataclass(frozen=True)
class DeviceInfo:
    browser: str  # ua-parser family, "" when unknown
    os: str
    device: str
    label: str  # "Chrome 126 on Linux", "Safari on iPhone", "Unknown browser"


@dataclass(frozen=True)
class Location:
    country: str  # English country name, or "unknown"
    city: str = ""

    @property
    def label(self) -> str:
        return location_label(self)


UNKNOWN = Location("unknown", "")


def _family(part: Any) -> str:
    family = getattr(part, "family", None) or ""
    return "" if family == "Other" else family


def describe_user_agent(ua: str | None) -> DeviceInfo:
    """The browser, OS and device of a User-Agent (first 512 characters), with a human label."""
    return _describe((ua or "")[:MAX_UA])


@lru_cache(maxsize=2048)
def _describe(ua: str) -> DeviceInfo:
    result = parse(ua) if ua.strip() else None
    agent = result.user_agent if result else None
    browser = _family(agent)
    os_name = _family(result.os if result else None)
    device = _family(result.device if result else None)
    where = device if device in _NAMED_DEVICES else _OS_NAMES.get(os_name, os_name)
    if browser:
        name = _BROWSER_NAMES.get(browser, browser)
        major = getattr(agent, "major", None)
        if major and device not in _NAMED_DEVICES:
            name = f"{name} {major}"
    else:
        name = UNKNOWN_BROWSER
    label = f"{name} on {where}" if where else name
    return DeviceInfo(browser=browser, os=os_name, device=device, label=label[:200])


def normalise_ip(ip: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address, IPv4-mapped IPv6 turned into IPv4; None when it does not parse."""
    try:
        addr = ipaddress.ip_address((ip or "").strip())
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _is_public(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return not (addr.is_private or addr.is_loopback or addr.is_link_local or addr.is_reserved
                or addr.is_multicast or addr.is_unspecified)  # fmt: skip


def packaged_geolite2_path() -> str:
    """The GeoLite2-City database shipped by the ``maxminddb-geolite2`` package."""
    from _maxminddb_geolite2 import geolite2_database  # the module behind ``geolite2``

    return geolite2_database()


class GeoLocator:
    """Country and city of public IP addresses, from a MaxMind database (no network look-ups)."""

    def __init__(self, db_path: str | os.PathLike[str] | None = None) -> None:
        self.db_path = str(db_path) if db_path else packaged_geolite2_path()
        self._reader = maxminddb.open_database(self.db_path)  # fails fast on a missing or broken file

    def close(self) -> None:
        self._reader.close()

    def locate(self, ip: str | None) -> Location:
        """Where ``ip`` is; ("unknown", "") for private, special or unparsable addresses and misses."""
        addr = normalise_ip(ip)
        if addr is None or not _is_public(addr):
            return UNKNOWN
        try:
            record = self._reader.get(str(addr))
        except (ValueError, maxminddb.InvalidDatabaseError):
            return UNKNOWN
        if not isinstance(record, dict):
            return UNKNOWN
        country = _name(record.get("country")) or _name(record.get("registered_country"))
        if not country:
            return UNKNOWN
        return Location(country, _name(record.get("city")))


def _name(part: Any) -> str:
    if not isinstance(part, dict):
        return ""
    names = part.get("names")
    return str(names.get("en", ""))[:100] if isinstance(names, dict) else ""


def location_label(loc: Location | None) -> str:
    """ "City, Country", "Country" or "Unknown location"."""
    if loc is None or not loc.country or loc.country == "unknown":
        return UNKNOWN_LOCATION
    return f"{loc.city}, {loc.country}" if loc.city else loc.country


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(p.strip().lower() for p in parts).encode("utf-8")).hexdigest()


def fingerprint(device: DeviceInfo) -> str:
    """SHA-256 of browser, OS and device families (no versions: an update is not a new device)."""
    return _digest("device", device.browser, device.os, device.device)


def location_fingerprint(loc: Location) -> str:
    """SHA-256 of country and city."""
    return _digest("location", loc.country, loc.city)
