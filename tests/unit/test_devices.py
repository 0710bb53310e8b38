"""User-Agent descriptions, GeoIP look-ups and the fingerprints behind new-device/new-location alerts."""

from __future__ import annotations

import pytest

from idp import devices
from idp.devices import (
    DeviceInfo,
    GeoLocator,
    Location,
    describe_user_agent,
    fingerprint,
    location_fingerprint,
    location_label,
    normalise_ip,
)

CHROME_LINUX = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                "Chrome/126.0.0.0 Safari/537.36")
CHROME_LINUX_NEXT = CHROME_LINUX.replace("126.0.0.0", "127.0.6533.72")
SAFARI_IPHONE = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
                 "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1")
SAFARI_MAC = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
              "Version/17.5 Safari/605.1.15")
FIREFOX_WINDOWS = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:127.0) Gecko/20100101 Firefox/127.0"
CHROME_ANDROID = ("Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) "
                  "Chrome/126.0.0.0 Mobile Safari/537.36")


# ---- user agents --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ua,label,browser,os_name,device", [
    (CHROME_LINUX, "Chrome 126 on Linux", "Chrome", "Linux", ""),
    (SAFARI_IPHONE, "Safari on iPhone", "Mobile Safari", "iOS", "iPhone"),
    (SAFARI_MAC, "Safari 17 on macOS", "Safari", "Mac OS X", "Mac"),
    (FIREFOX_WINDOWS, "Firefox 127 on Windows", "Firefox", "Windows", ""),
    (CHROME_ANDROID, "Chrome 126 on Android", "Chrome Mobile", "Android", "K"),
    ("curl/8.5.0", "curl 8", "curl", "", ""),
])
def test_describe_user_agent(ua, label, browser, os_name, device):
    assert describe_user_agent(ua) == DeviceInfo(browser, os_name, device, label)


@pytest.mark.parametrize("ua", ["", "   ", None, "garbage!!", "\x00\xff<script>", "a" * 100_000])
def test_unknown_user_agents(ua):
    info = describe_user_agent(ua)
    assert info.label == "Unknown browser"
    assert (info.browser, info.os, info.device) == ("", "", "")


def test_user_agent_is_truncated_and_cached():
    devices._describe.cache_clear()
    long_ua = CHROME_LINUX + " " + "x" * 5000
    assert describe_user_agent(long_ua).label == "Chrome 126 on Linux"
    assert describe_user_agent(long_ua + "different tail") is describe_user_agent(long_ua)  # same first 512
    info = devices._describe.cache_info()
    assert info.hits >= 2 and info.misses == 1


# ---- IP addresses -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def geo():
    locator = GeoLocator()
    yield locator
    locator.close()


def test_public_addresses_are_located(geo):
    # What the GeoLite2-City build shipped with maxminddb-geolite2 (2018-07) says.
    assert geo.locate("8.8.8.8") == Location("United States", "")
    assert geo.locate("81.2.69.142") == Location("United Kingdom", "Willesden")
    assert geo.locate("2001:4860:4860::8888") == Location("United States", "Mountain View")
    assert geo.locate("89.160.20.112") == Location("Sweden", "Stockholm")


def test_ipv4_mapped_ipv6_is_normalised(geo):
    assert geo.locate("::ffff:81.2.69.142") == geo.locate("81.2.69.142")
    assert geo.locate(" 81.2.69.142 ") == geo.locate("81.2.69.142")
    assert str(normalise_ip("::ffff:10.1.2.3")) == "10.1.2.3"
    assert normalise_ip("not-an-ip") is None


class _Exploding:
    def get(self, ip):  # pragma: no cover - must never be called
        raise AssertionError(f"looked up {ip}")


@pytest.mark.parametrize("ip", [
    "10.0.0.1", "192.168.1.1", "172.16.0.1", "127.0.0.1", "::1", "169.254.1.1", "fe80::1", "0.0.0.0", "::",
    "224.0.0.1", "ff02::1", "240.0.0.1", "fc00::1", "::ffff:192.168.0.1", "::ffff:127.0.0.1",
    "", None, "bogus", "1.2.3.4.5", "8.8.8.8/32", "8.8.8.8; DROP",
])
def test_special_and_unparsable_addresses_are_unknown_without_a_lookup(geo, ip, monkeypatch):
    monkeypatch.setattr(geo, "_reader", _Exploding())
    assert geo.locate(ip) == Location("unknown", "")


def test_documentation_addresses_not_in_the_database(geo):
    assert geo.locate("203.0.113.7") == Location("unknown", "")


def test_a_configured_database_is_used_and_must_exist(tmp_path):
    located = GeoLocator(devices.packaged_geolite2_path())
    assert located.locate("8.8.8.8").country == "United States"
    located.close()
    with pytest.raises(FileNotFoundError):
        GeoLocator(tmp_path / "missing.mmdb")


def test_location_labels():
    assert location_label(Location("United Kingdom", "London")) == "London, United Kingdom"
    assert Location("United States", "").label == "United States"
    assert location_label(Location("unknown", "")) == "Unknown location"
    assert location_label(Location("", "")) == "Unknown location"
    assert location_label(None) == "Unknown location"


# ---- fingerprints -------------------------------------------------------------------------------------------
def test_device_fingerprint_ignores_versions_but_not_families():
    fp = fingerprint(describe_user_agent(CHROME_LINUX))
    assert len(fp) == 64 and int(fp, 16) >= 0
    assert fingerprint(describe_user_agent(CHROME_LINUX_NEXT)) == fp  # a browser update is not a new device
    others = {fingerprint(describe_user_agent(ua)) for ua in (SAFARI_IPHONE, SAFARI_MAC, FIREFOX_WINDOWS,
                                                               CHROME_ANDROID, "")}
    assert fp not in others and len(others) == 5
    # Fields do not run into each other.
    assert fingerprint(DeviceInfo("ab", "c", "", "")) != fingerprint(DeviceInfo("a", "bc", "", ""))


def test_location_fingerprint():
    london = location_fingerprint(Location("United Kingdom", "London"))
    assert london == location_fingerprint(Location("United Kingdom", "London"))
    assert london != location_fingerprint(Location("United Kingdom", "Manchester"))
    assert london != location_fingerprint(Location("United Kingdom", ""))
    assert location_fingerprint(Location("United States", "")) != fingerprint(DeviceInfo("United States", "", "", ""))
