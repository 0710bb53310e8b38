"""Two `idhub serve` processes on one PostgreSQL and one Redis: sessions are shared, revocations are global,
and restarting (or losing) Redis logs nobody out and forgets no ended session."""

from __future__ import annotations

import re

import pytest
import requests

from tests.helpers.live import LiveHub, random_secret
from tests.services import drop_postgres, postgres_url, start_private_redis

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
FLOW = re.compile(r'name="flow" value="([^"]+)"')
ALICE, ALICE_PW = "alice@acme.test", "S3cure-Example!"
CONFIG = {"workspaces": [{"slug": "acme", "name": "Acme", "plan": "enterprise",
                          "users": [{"email": ALICE, "password": ALICE_PW}]}]}
COOKIE = "idhub_session_acme"


class Client:
    """A browser-like requests client whose cookies can be replayed against any node."""

    def __init__(self, ua="Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0 Safari/537.36"):
        self.s = requests.Session()
        self.s.headers["User-Agent"] = ua

    def login(self, node: LiveHub):
        r = self.s.get(node.url("/w/acme/login"))
        r = self.s.post(node.url("/w/acme/login"), data={"email": ALICE, "csrf_token": CSRF.search(r.text)[1]})
        r = self.s.post(node.url("/w/acme/login/password"), data={
            "flow": FLOW.search(r.text)[1], "password": ALICE_PW, "csrf_token": CSRF.search(r.text)[1]},
            allow_redirects=False)
        assert r.status_code == 302, r.text[:300]
        return self

    def security(self, node: LiveHub) -> requests.Response:
        return self.s.get(node.url("/w/acme/settings/security"), allow_redirects=False)

    def signed_in(self, node: LiveHub) -> bool:
        r = self.security(node)
        assert r.status_code in (200, 302), (r.status_code, r.text[:300])
        return r.status_code == 200

    def end_other(self, node: LiveHub, other: Client):
        page = self.security(node).text
        current = re.search(r'<tr data-session="([^"]+)" class="current"', page)[1]
        others = [s for s in re.findall(r'<tr data-session="([^"]+)"', page) if s != current]
        other_page = other.security(node).text
        target = re.search(r'<tr data-session="([^"]+)" class="current"', other_page)[1]
        assert target in others
        r = self.s.post(node.url(f"/w/acme/settings/security/sessions/{target}/end"),
                        data={"csrf_token": CSRF.search(page)[1]}, allow_redirects=False)
        assert r.status_code == 302


@pytest.fixture
def cluster():
    db = postgres_url()
    secret = random_secret(48)
    with start_private_redis() as redis_server:
        env = {"IDHUB_SECRET_KEY": secret}
        a = LiveHub(CONFIG, database_url=db, redis_url=redis_server.url, extra_env=env, workers=1)
        b = LiveHub(None, database_url=db, redis_url=redis_server.url, extra_env=env, workers=1)
        try:
            a.start()
            b.start()
            yield a, b, redis_server
        finally:
            a.cleanup()
            b.cleanup()
    drop_postgres(db)


def test_sessions_are_shared_and_revocations_are_global(cluster):
    a, b, redis_server = cluster
    one = Client().login(a)
    assert one.signed_in(b)  # a session made on A works on B
    two = Client(ua="Mozilla/5.0 (Windows NT 10.0; rv:128.0) Gecko/20100101 Firefox/128.0").login(b)
    assert two.signed_in(a)
    one.end_other(a, two)  # ended on A …
    assert not two.signed_in(b)  # … is ended on B, at once
    assert not two.signed_in(a)
    assert one.signed_in(b)

    # Restarting Redis (no persistence: the cache is empty afterwards) logs nobody out …
    redis_server.restart()
    assert one.signed_in(a) and one.signed_in(b)
    # … and forgets no ended session.
    assert not two.signed_in(a) and not two.signed_in(b)


def test_redis_outage_keeps_sign_in_working_and_loses_nothing(cluster):
    a, b, redis_server = cluster
    one = Client().login(a)
    two = Client(ua="Mozilla/5.0 (Macintosh) Safari/605.1.15").login(a)
    assert one.signed_in(b) and two.signed_in(b)
    redis_server.stop()
    # sessions are still served from the database
    assert one.signed_in(a) and two.signed_in(b)
    # ending a session during the outage is recorded in the database
    one.end_other(b, two)
    assert not two.signed_in(a)
    # a new sign-in keeps working: its flow, throttles and one-time values fall back to the database
    fresh = Client(ua="Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0").login(a)
    assert fresh.signed_in(b)
    r = requests.get(a.url("/readyz"))
    assert r.status_code == 200 and r.json()["redis"] == "degraded"
    redis_server.start()
    # back to normal: the ended session stays ended (the cache may have missed the revocation), the other lives
    assert not two.signed_in(a) and not two.signed_in(b)
    assert one.signed_in(a) and one.signed_in(b) and fresh.signed_in(a)
    assert Client().login(b).signed_in(a)
