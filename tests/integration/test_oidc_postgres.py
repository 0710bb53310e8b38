"""The one-shot guarantees of the OIDC provider on PostgreSQL (with Redis sessions), under real concurrency."""

from __future__ import annotations

import threading

import pytest

from tests.conftest import Browser, make_settings
from tests.integration.test_oidc import WIKI_AUTH, code_flow, redeem
from tests.interop.oidc_support import make_oidc_app
from tests.services import drop_postgres, postgres_url, redis_url

pytestmark = pytest.mark.services


@pytest.fixture
def pg_app(tmp_path):
    url = postgres_url()
    redis, _prefix = redis_url()
    app = make_oidc_app(make_settings(tmp_path, database_url=url, redis_url=redis))
    try:
        yield app
    finally:
        app.extensions["idhub"].engine.dispose()
        drop_postgres(url)


def race(app, n, fn):
    results, barrier = [], threading.Barrier(n)

    def worker():
        client = app.test_client()
        barrier.wait()
        results.append(fn(client).status_code)

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(results)


def test_parallel_code_redemption_postgres(pg_app):
    code, verifier = code_flow(Browser(pg_app))
    assert race(pg_app, 16, lambda c: redeem(c, code, verifier)) == [200] + [400] * 15


def test_parallel_refresh_postgres(pg_app):
    """One refresh request sent several times at once (an app retrying through two nodes after a lost answer):
    within the grace window every copy gets the same answer, one token pair is issued, the family lives on."""
    code, verifier = code_flow(Browser(pg_app))
    rt = redeem(pg_app.test_client(), code, verifier).get_json()["refresh_token"]
    bodies, barrier = [], threading.Barrier(8)

    def worker():
        client = pg_app.test_client()
        barrier.wait()
        r = client.post("/w/acme/oauth2/token", headers=WIKI_AUTH,
                        data={"grant_type": "refresh_token", "refresh_token": rt})
        bodies.append((r.status_code, r.get_json()))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [s for s, _ in bodies] == [200] * 8, bodies
    assert len({b["refresh_token"] for _, b in bodies}) == 1 and len({b["access_token"] for _, b in bodies}) == 1
    r = pg_app.test_client().post("/w/acme/oauth2/token", headers=WIKI_AUTH,
                                  data={"grant_type": "refresh_token", "refresh_token": bodies[0][1]["refresh_token"]})
    assert r.status_code == 200


def test_parallel_refresh_revokes_the_family_postgres(pg_app):
    """Rotation marks the old token used in the same transaction that records the new tokens: of parallel uses
    exactly one is issued tokens, and the others (replays) revoke the family — the winner's new token too. (With
    the retry grace window turned off: IDHUB_OIDC_REFRESH_GRACE=0.)"""
    hub = pg_app.extensions["idhub"]
    hub.settings = hub.settings.with_(oidc_refresh_grace=0)
    code, verifier = code_flow(Browser(pg_app))
    rt = redeem(pg_app.test_client(), code, verifier).get_json()["refresh_token"]
    bodies, barrier = [], threading.Barrier(6)

    def worker():
        client = pg_app.test_client()
        barrier.wait()
        r = client.post("/w/acme/oauth2/token", headers=WIKI_AUTH,
                        data={"grant_type": "refresh_token", "refresh_token": rt})
        bodies.append((r.status_code, r.get_json()))

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    won = [b for s, b in bodies if s == 200]
    assert len(won) <= 1 and all(b["error"] == "invalid_grant" for s, b in bodies if s != 200), bodies
    for b in won:
        r = pg_app.test_client().post("/w/acme/oauth2/token", headers=WIKI_AUTH,
                                      data={"grant_type": "refresh_token", "refresh_token": b["refresh_token"]})
        assert r.status_code == 400


def test_parallel_redemptions_record_the_app_once_postgres(pg_app):
    """Codes of one session redeemed at the same time: every redemption succeeds (INSERT … ON CONFLICT DO
    NOTHING never fails a token request) and the session has the app once."""
    from sqlalchemy import select

    from oidc.models import OidcSessionClient

    browser = Browser(pg_app)
    codes = iter([code_flow(browser) for _ in range(8)])
    lock = threading.Lock()

    def next_code():
        with lock:
            return next(codes)

    def redeem_one(client):
        code, verifier = next_code()
        return redeem(client, code, verifier)

    assert race(pg_app, 8, redeem_one) == [200] * 8
    with pg_app.extensions["idhub"].db() as db:
        rows = list(db.scalars(select(OidcSessionClient)))
    assert len(rows) == 1 and rows[0].client_id == "wiki"
