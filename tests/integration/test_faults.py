"""Faults on a fleet: two `idhub serve` nodes (two workers each) on one PostgreSQL, with Redis (and, in the last
test, PostgreSQL) going away, freezing, or being cut off from one node only.

What must hold throughout: no 500, no acknowledged write lost, no ended session accepted; a revocation made on a
node that cannot reach Redis is enforced by the other within a second (IDHUB_SESSION_RECHECK); the audit chain
verifies afterwards. Every wait is a bounded poll; nothing sleeps for a fixed time to "let things settle".
"""

from __future__ import annotations

import json
import re
import threading
import time
from urllib.parse import urlsplit

import pytest
import requests

from tests.helpers.faults import PrivatePostgres, TcpProxy
from tests.helpers.live import LiveHub, random_secret
from tests.integration.scim_helpers import PATCH_OP, SCIM_JSON, TOKEN
from tests.interop.oidc_support import authorize_path, pkce
from tests.services import drop_postgres, postgres_url, start_private_redis

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
FLOW = re.compile(r'name="flow" value="([^"]+)"')
PASSWORD = "S3cure-Example!"
USERS = ["alice@acme.test", "bob@acme.test", "carol@acme.test", "dave@acme.test"]
WIKI_CB = "https://wiki.example/callback"
CONFIG = {"workspaces": [{
    "slug": "acme", "name": "Acme", "plan": "enterprise",
    "users": [{"email": e, "password": PASSWORD} for e in USERS],
    "apps": [{"slug": "wiki", "name": "Wiki", "protocol": "oidc", "client_id": "wiki",
              "client_secret": "wiki-" + "s" * 40, "redirect_uris": [WIKI_CB]}],
    "scim_tokens": [{"name": "okta", "token": TOKEN}],
}]}
RECHECK = 1.0  # the documented bound (IDHUB_SESSION_RECHECK's default)
SLACK = 0.1  # the revoking request's answer is read before the clock starts: this only covers timer granularity
POLL = 0.02


class Browser:
    """A browser-like client (cookies, a user agent) that can be pointed at either node."""

    def __init__(self, ua: str = "Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0 Safari/537.36") -> None:
        self.s = requests.Session()
        self.s.headers["User-Agent"] = ua

    def login(self, node: LiveHub, email: str = USERS[0]) -> requests.Response:
        """The two-step sign-in; returns the password step's answer (302 on success)."""
        r = self.s.get(node.url("/w/acme/login"), timeout=10)
        if r.status_code != 200:
            return r
        r = self.s.post(node.url("/w/acme/login"), data={"email": email, "csrf_token": CSRF.search(r.text)[1]},
                        timeout=10)
        if r.status_code != 200 or not FLOW.search(r.text):
            return r
        return self.s.post(node.url("/w/acme/login/password"), data={
            "flow": FLOW.search(r.text)[1], "password": PASSWORD, "csrf_token": CSRF.search(r.text)[1]},
            allow_redirects=False, timeout=10)

    def security(self, node: LiveHub) -> requests.Response:
        return self.s.get(node.url("/w/acme/settings/security"), allow_redirects=False, timeout=10)

    def cookies(self) -> dict:
        return self.s.cookies.get_dict()


def page(node: LiveHub, cookies: dict, path: str = "/w/acme/settings/security") -> requests.Response:
    """A fresh request with a fixed set of cookies (a node's answer clearing a cookie cannot hide the next check)."""
    return requests.get(node.url(path), cookies=cookies, allow_redirects=False, timeout=10,
                        headers={"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0 Safari/537.36"})


def gets_code(node: LiveHub, cookies: dict) -> bool:
    """Whether the OIDC authorization endpoint hands this browser a code for the wiki app at once."""
    _verifier, challenge = pkce()
    r = page(node, cookies, authorize_path(client_id="wiki", redirect_uri=WIKI_CB, scope="openid",
                                           challenge=challenge))
    assert r.status_code < 500, (r.status_code, r.text[:300])
    return r.status_code == 302 and r.headers["Location"].startswith(WIKI_CB + "?") and "code=" in r.headers[
        "Location"]


def end_session(node: LiveHub, actor: Browser, target: Browser) -> None:
    """``actor`` ends ``target``'s session from the security page (the "End" button), on ``node``."""
    mine = actor.security(node).text
    theirs = target.security(node).text
    sid = re.search(r'<tr data-session="([^"]+)" class="current"', theirs)[1]
    r = actor.s.post(node.url(f"/w/acme/settings/security/sessions/{sid}/end"),
                     data={"csrf_token": CSRF.search(mine)[1]}, allow_redirects=False, timeout=10)
    assert r.status_code == 302, (r.status_code, r.text[:300])


def refused_within(node: LiveHub, cookies: dict, bound: float) -> float:
    """Poll the security page until it sends the browser to sign in; returns when the refusing request started
    (seconds after the call). The bound is about when a request *starts* (its answer may take longer on a busy
    machine): no request that started more than ``bound`` seconds after the revocation may be served. A 500
    fails at once."""
    start = time.monotonic()
    seen = []
    while True:
        sent = time.monotonic() - start
        r = page(node, cookies)
        seen.append((round(sent, 3), r.status_code))
        assert r.status_code != 500, f"500 while waiting for the revocation: {seen}"
        if r.status_code == 302:
            assert urlsplit(r.headers["Location"]).path == "/w/acme/login", r.headers["Location"]
            return sent
        assert sent <= bound, f"a request sent {sent:.2f}s after the revocation was served: {seen[-5:]}"
        time.sleep(POLL)


def scim(node: LiveHub, method: str, path: str, body: dict | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {TOKEN}", "Accept": SCIM_JSON}
    if body is not None:
        headers["Content-Type"] = SCIM_JSON
    return requests.request(method, node.url("/w/acme/scim/v2" + path), headers=headers, timeout=10,
                            data=json.dumps(body) if body is not None else None)


def user_id(node: LiveHub, email: str) -> str:
    r = scim(node, "GET", f'/Users?filter=userName eq "{email}"')
    assert r.status_code == 200, r.text
    return r.json()["Resources"][0]["id"]


def ready(node: LiveHub) -> requests.Response:
    return requests.get(node.url("/readyz"), timeout=10)


def no_errors_logged(*nodes: LiveHub) -> None:
    for node in nodes:
        text = node.log_text()
        assert "Traceback" not in text and '"status": 500' not in text, node.log_tail(80)


def audit_verifies(node: LiveHub) -> None:
    res = node.run("audit", "verify", check=False)
    assert res.returncode == 0 and "intact" in res.stdout, res.stdout + res.stderr


# ---- Redis cut off from one node ------------------------------------------------------------------------------
@pytest.fixture
def split_fleet():
    """Node A reaches Redis through a proxy the test can cut; node B reaches it directly."""
    db = postgres_url()
    secret = random_secret(48)
    with start_private_redis() as redis_server, TcpProxy(redis_server.port) as proxy:
        env = {"IDHUB_SECRET_KEY": secret}
        a = LiveHub(CONFIG, database_url=db, redis_url=proxy.url(), extra_env=env, workers=2)
        b = LiveHub(None, database_url=db, redis_url=redis_server.url, extra_env=env, workers=2)
        try:
            a.start()
            b.start()
            yield a, b, proxy
        finally:
            a.cleanup()
            b.cleanup()
    drop_postgres(db)


def test_a_revocation_on_a_node_cut_from_redis_is_enforced_by_the_other_within_a_second(split_fleet):
    a, b, proxy = split_fleet
    one, two = Browser(), Browser(ua="Mozilla/5.0 (Windows NT 10.0; rv:128.0) Gecko/20100101 Firefox/128.0")
    assert one.login(a).status_code == 302 and two.login(b).status_code == 302
    cookies = two.cookies()
    for _ in range(4):  # both of B's workers have it, from the shared cache
        assert page(b, cookies).status_code == 200
    assert gets_code(b, cookies)

    proxy.cut()
    assert one.security(a).status_code == 200  # A serves from the database
    end_session(a, one, two)  # ended on A, which cannot tombstone the cached copy
    took = refused_within(b, cookies, RECHECK + SLACK)
    assert not gets_code(b, cookies)  # no OIDC code for an ended session either
    assert page(a, cookies).status_code == 302
    assert ready(a).json() == {"status": "degraded", "database": "ok", "redis": "degraded"}
    assert ready(a).status_code == 200 and ready(b).status_code == 200

    # the user who is still signed in keeps working on both nodes; new sign-ins work on the cut node
    assert one.security(a).status_code == 200 and one.security(b).status_code == 200
    three = Browser(ua="Mozilla/5.0 (Macintosh) Safari/605.1.15")
    assert three.login(a, USERS[1]).status_code == 302
    assert three.security(b).status_code == 200

    proxy.heal()
    assert page(b, cookies).status_code == 302 and page(a, cookies).status_code == 302
    assert one.security(b).status_code == 200 and three.security(a).status_code == 200
    no_errors_logged(a, b)
    audit_verifies(a)
    print(f"revocation enforced on B after {took:.3f}s")


def test_deprovisioning_on_a_node_cut_from_redis_reaches_the_other_within_a_second(split_fleet):
    """SCIM deactivation and deletion on the cut node: the other node stops the user's pages within the bound,
    and a deleted user's cached session answers a sign-in redirect there, never a 500."""
    a, b, proxy = split_fleet
    deactivated, deleted = Browser(), Browser(ua="Mozilla/5.0 (Macintosh) Safari/605.1.15")
    assert deactivated.login(b, USERS[2]).status_code == 302 and deleted.login(b, USERS[3]).status_code == 302
    c1, c2 = deactivated.cookies(), deleted.cookies()
    assert page(b, c1).status_code == 200 and page(b, c2).status_code == 200
    ids = user_id(a, USERS[2]), user_id(a, USERS[3])

    proxy.cut()
    r = scim(a, "PATCH", f"/Users/{ids[0]}", {"schemas": [PATCH_OP], "Operations": [
        {"op": "replace", "path": "active", "value": False}]})
    assert r.status_code == 200 and r.json()["active"] is False, r.text
    refused_within(b, c1, RECHECK + SLACK)
    r = scim(a, "DELETE", f"/Users/{ids[1]}")
    assert r.status_code == 204, r.text
    refused_within(b, c2, RECHECK + SLACK)
    for _ in range(5):
        assert page(b, c2).status_code == 302
    proxy.heal()
    assert page(b, c1).status_code == 302 and page(b, c2).status_code == 302
    no_errors_logged(a, b)
    audit_verifies(a)


# ---- Redis frozen under load ----------------------------------------------------------------------------------
class Load:
    """A steady stream of sign-ins and page views against both nodes, from a background thread: every answer is
    kept; a sign-in answered 302 is an acknowledged write (the session must work afterwards)."""

    def __init__(self, nodes: list[LiveHub]) -> None:
        self.nodes = nodes
        self.answers: list[tuple[str, int, str]] = []  # (what, status, phase)
        self.signed_in: list[Browser] = []
        self.phase = "before"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            node = self.nodes[i % 2]
            other = self.nodes[(i + 1) % 2]
            browser = Browser(ua=f"Mozilla/5.0 (X11; Linux x86_64) Chrome/126.{i} Safari/537.36")
            try:
                r = browser.login(node, USERS[i % 2])
                self.answers.append(("signin", r.status_code, self.phase))
                if r.status_code == 302:
                    self.signed_in.append(browser)
                    for n in (node, other):
                        self.answers.append(("page", browser.security(n).status_code, self.phase))
            except requests.RequestException as exc:
                self.answers.append(("signin", 599, f"{self.phase}: {type(exc).__name__}"))
            i += 1

    def count(self, what: str, phase: str, status: int = 302) -> int:
        return sum(1 for w, s, p in self.answers if w == what and p == phase and s == status)

    def wait_for(self, what: str, phase: str, n: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.count(what, phase, 302 if what == "signin" else 200) < n:
            assert time.monotonic() < deadline, f"fewer than {n} {what} in {phase}: {self.answers[-10:]}"
            time.sleep(POLL)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)


@pytest.fixture
def fleet():
    db = postgres_url()
    secret = random_secret(48)
    with start_private_redis() as redis_server:
        env = {"IDHUB_SECRET_KEY": secret}
        a = LiveHub(CONFIG, database_url=db, redis_url=redis_server.url, extra_env=env, workers=2)
        b = LiveHub(None, database_url=db, redis_url=redis_server.url, extra_env=env, workers=2)
        try:
            a.start()
            b.start()
            yield a, b, redis_server
        finally:
            a.cleanup()
            b.cleanup()
    drop_postgres(db)


def test_a_frozen_redis_under_load_costs_no_error_and_no_revocation(fleet):
    a, b, redis_server = fleet
    victim = Browser(ua="Mozilla/5.0 (Macintosh) Safari/605.1.15")
    keeper = Browser(ua="Mozilla/5.0 (Windows NT 10.0; rv:128.0) Gecko/20100101 Firefox/128.0")
    assert victim.login(a, USERS[2]).status_code == 302 and keeper.login(a, USERS[2]).status_code == 302
    cookies = victim.cookies()
    assert page(b, cookies).status_code == 200
    with Load([a, b]) as load:
        load.wait_for("signin", "before", 3)
        load.phase = "frozen"
        redis_server.freeze()  # SIGSTOP: connections hang, nothing answers
        load.wait_for("signin", "frozen", 6)  # sign-ins go on, from the database
        for node in (a, b):
            r = ready(node)
            assert r.status_code == 200 and r.json()["redis"] == "degraded", r.text
        end_session(a, keeper, victim)
        refused_within(b, cookies, RECHECK + SLACK)
        load.phase = "after"
        redis_server.thaw()
        load.wait_for("signin", "after", 3)
    for node in (a, b):
        deadline = time.monotonic() + 15  # the breaker's next trial call closes it (IDHUB_REDIS_RETRY_INTERVAL)
        while ready(node).json().get("redis") != "ok":
            assert time.monotonic() < deadline, ready(node).text
            time.sleep(0.1)

    errors = [x for x in load.answers if x[1] >= 500]
    assert not errors, errors
    # every acknowledged sign-in is a session that works on both nodes; the ended one works nowhere
    assert len(load.signed_in) >= 12
    for browser in load.signed_in:
        assert browser.security(a).status_code == 200 and browser.security(b).status_code == 200
    assert page(a, cookies).status_code == 302 and page(b, cookies).status_code == 302
    metrics = requests.get(a.url("/metrics"), timeout=10).text
    assert "idhub_redis_circuit_opened_total" in metrics
    no_errors_logged(a, b)
    audit_verifies(a)


# ---- PostgreSQL away ------------------------------------------------------------------------------------------
@pytest.fixture
def pg_fleet():
    with PrivatePostgres() as pg, start_private_redis() as redis_server:
        db = pg.create_database()
        env = {"IDHUB_SECRET_KEY": random_secret(48)}
        a = LiveHub(CONFIG, database_url=db, redis_url=redis_server.url, extra_env=env, workers=2)
        b = LiveHub(None, database_url=db, redis_url=redis_server.url, extra_env=env, workers=2)
        try:
            a.start()
            b.start()
            yield a, b, pg
        finally:
            a.cleanup()
            b.cleanup()


def test_a_database_outage_is_a_clean_503_and_loses_nothing(pg_fleet):
    a, b, pg = pg_fleet
    kept, ended = Browser(), Browser(ua="Mozilla/5.0 (Macintosh) Safari/605.1.15")
    assert kept.login(a).status_code == 302 and ended.login(b).status_code == 302
    ended_cookies = ended.cookies()
    end_session(a, kept, ended)  # acknowledged before the outage
    assert page(b, ended_cookies).status_code == 302

    pg.stop()
    pg.wait_down()
    for node in (a, b):
        r = ready(node)
        assert r.status_code == 503 and r.headers["Retry-After"] and r.json()["database"] == "unavailable"
        assert requests.get(node.url("/healthz"), timeout=10).status_code == 200
        r = kept.security(node)
        assert r.status_code == 503 and r.headers["Retry-After"] and "Error id" in r.text
        r = page(node, ended_cookies)
        assert r.status_code == 503  # never served from the cache while revocations cannot be checked
        r = Browser().login(node, USERS[1])
        assert r.status_code == 503 and r.headers.get("Retry-After"), r.status_code

    pg.start()
    for node in (a, b):
        deadline = time.monotonic() + 20
        while ready(node).status_code != 200:
            assert time.monotonic() < deadline, ready(node).text
            time.sleep(0.1)
    assert kept.security(a).status_code == 200 and kept.security(b).status_code == 200
    assert page(a, ended_cookies).status_code == 302 and page(b, ended_cookies).status_code == 302
    assert Browser().login(b, USERS[1]).status_code == 302
    no_errors_logged(a, b)
    audit_verifies(a)
