import ipaddress

import pytest

from idp.clientip import UntrustedAddress, client_ip

PROXIES = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))


def test_header_ignored_without_trusted_proxies():
    assert client_ip("203.0.113.9", "198.51.100.1", ()) == "203.0.113.9"


def test_spoofed_header_from_an_untrusted_peer_has_no_effect():
    assert client_ip("203.0.113.9", "10.0.0.1, 198.51.100.1", PROXIES) == "203.0.113.9"


def test_rightmost_untrusted_hop_is_the_client():
    # the client tried to prepend a fake address; our proxy appended the real one
    assert client_ip("10.0.0.2", "1.2.3.4, 198.51.100.7, 10.0.0.1", PROXIES) == "198.51.100.7"


@pytest.mark.parametrize("header", ["garbage", "1.2.3.4, nonsense", "", "1.2.3.4;rm -rf", "x" * 3000])
def test_garbage_from_a_trusted_proxy_denies(header):
    with pytest.raises(UntrustedAddress):
        client_ip("10.0.0.2", header, PROXIES)


def test_ipv4_mapped_ipv6_is_normalised():
    assert client_ip("::ffff:203.0.113.9", None, ()) == "203.0.113.9"
    assert client_ip("::ffff:10.0.0.2", "::ffff:198.51.100.7", PROXIES) == "198.51.100.7"


def test_missing_peer_address_denies():
    with pytest.raises(UntrustedAddress):
        client_ip(None, None, ())
