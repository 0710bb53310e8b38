"""/metrics is for the operator's scrapers, not for the Internet."""

from __future__ import annotations

import ipaddress

import pytest

from config.settings import SettingsError, load_settings
from tests.conftest import make_app, make_settings

TOKEN = "m" * 40


@pytest.fixture
def app(tmp_path):
    proxies = (ipaddress.ip_network("10.0.0.5/32"),)
    return make_app(make_settings(tmp_path, trusted_proxies=proxies, metrics_token=TOKEN))


def scrape(app, remote="127.0.0.1", **headers):
    return app.test_client().get("/metrics", headers=headers, environ_base={"REMOTE_ADDR": remote})


def test_loopback_and_private_networks_may_scrape(app):
    for remote in ("127.0.0.1", "::1", "10.1.2.3", "192.168.7.7", "172.20.0.9"):
        r = scrape(app, remote)
        assert r.status_code == 200 and "idhub_" in r.get_data(as_text=True), remote


def test_the_internet_may_not(app):
    r = scrape(app, "203.0.113.50")
    assert r.status_code == 403 and "idhub_" not in r.get_data(as_text=True)
    # nor through the load balancer: the trusted proxy's X-Forwarded-For names the real client
    assert scrape(app, "10.0.0.5", **{"X-Forwarded-For": "203.0.113.50"}).status_code == 403
    assert scrape(app, "10.0.0.5", **{"X-Forwarded-For": "10.9.9.9"}).status_code == 200


def test_a_bearer_token_lets_a_remote_scraper_in(app):
    assert scrape(app, "203.0.113.50", Authorization=f"Bearer {TOKEN}").status_code == 200
    for bad in (f"Bearer {TOKEN[:-1]}", f"Basic {TOKEN}", "Bearer ", TOKEN, "Bearer " + "x" * 5000):
        assert scrape(app, "203.0.113.50", Authorization=bad).status_code == 403, bad


def test_metrics_settings_from_the_environment(tmp_path):
    s = load_settings({"IDHUB_SECRET_KEY": "k" * 40, "IDHUB_METRICS_ALLOW": "100.64.0.0/10, 2001:db8::/32"})
    assert [str(n) for n in s.metrics_networks] == ["100.64.0.0/10", "2001:db8::/32"]
    assert load_settings({"IDHUB_SECRET_KEY": "k" * 40, "IDHUB_METRICS_ALLOW": "none"}).metrics_networks == ()
    (tmp_path / "tok").write_text(TOKEN + "\n")
    assert load_settings({"IDHUB_SECRET_KEY": "k" * 40, "IDHUB_METRICS_TOKEN_FILE": str(tmp_path / "tok")}
                         ).metrics_token == TOKEN
    for bad in ({"IDHUB_METRICS_TOKEN": "short"}, {"IDHUB_METRICS_ALLOW": "not-a-network"}):
        with pytest.raises(SettingsError):
            load_settings({"IDHUB_SECRET_KEY": "k" * 40, **bad})


def test_the_help_article_is_served_and_linked_from_every_page(app):
    c = app.test_client()
    login = c.get("/w/acme/login").get_data(as_text=True)
    assert 'href="/help/security?ws=acme"' in login  # the footer of a workspace page links its own help
    page = c.get("/help/security?ws=acme")
    text = page.get_data(as_text=True)
    assert page.status_code == 200
    for promise in ("Settings › Security › Two-factor authentication", "Enable 2FA", "Authenticator App", "SMS",
                    "10 single-use codes", "Disable 2FA", "24 hours", "End all sessions", "30 days",
                    "This wasn't me", "IP allowlists"):
        assert promise in text.replace("&#39;", "'"), promise
    assert 'href="/w/acme/settings/security"' in text
    hostile = c.get('/help/security?ws="><script>x</script>').get_data(as_text=True)
    assert "<script>x" not in hostile and "/settings/security\"" not in hostile
