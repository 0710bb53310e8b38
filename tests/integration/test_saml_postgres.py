"""The SAML IdP on PostgreSQL with Redis (sessions, one-time values): SSO and Single Logout with pysaml2 SPs,
and the one-shot guarantees under real concurrency (a logout chain's step is consumed once; one participant
record per session and SP however many tabs sign in at once)."""

from __future__ import annotations

import threading

import pytest
from saml2 import BINDING_HTTP_POST
from sqlalchemy import func, select

from saml.models import SamlSessionParticipant
from tests.conftest import ALICE, Browser, make_app, make_settings
from tests.integration.test_saml_idp import _idp_cert, post_form, redirect_request
from tests.integration.test_saml_slo import CRM, HR, add_sp, local, sp_answers_redirect, sso
from tests.services import drop_postgres, postgres_url, redis_url

pytestmark = pytest.mark.services


@pytest.fixture
def env(tmp_path):
    url = postgres_url()
    redis, _prefix = redis_url()
    app = make_app(make_settings(tmp_path, database_url=url, redis_url=redis))
    try:
        yield app, tmp_path
    finally:
        app.extensions["idhub"].engine.dispose()
        drop_postgres(url)


def race(n, fn):
    results, barrier = [], threading.Barrier(n)

    def worker():
        barrier.wait()
        results.append(fn())

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_sso_and_logout_chain_on_postgres(env):
    app, tmp = env
    hub = app.extensions["idhub"]
    assert hub.engine.dialect.name == "postgresql"
    crm = add_sp(app, tmp, "crm", CRM)
    hr = add_sp(app, tmp, "hr", HR)
    b = Browser(app)
    crm_name = sso(app, b, crm, first=True)
    assert crm_name.text == ALICE
    # eight tabs of the same session open hr at once: all get a response, one participant record
    urls = [redirect_request(hr) for _ in range(8)]
    cookie = b.client.get_cookie("idhub_session_acme")

    pending, lock = iter(urls), threading.Lock()

    def open_hr():
        with lock:
            _reqid, url = next(pending)
        c = app.test_client()
        c.set_cookie(cookie.key, cookie.value, path="/")
        return c.get(url)

    responses = race(8, open_hr)
    assert [r.status_code for r in responses] == [200] * 8
    for r in responses:
        _a, saml_response, _r = post_form(r)
        out = hr.parse_authn_request_response(saml_response, BINDING_HTTP_POST,
                                              outstanding={u[0]: "/" for u in urls})
        hr_name = out.name_id
    with hub.db() as db:
        assert db.scalar(select(func.count()).select_from(SamlSessionParticipant)) == 2
    # sign out of idhub: the chain reaches crm, whose answer is accepted exactly once under a race
    b.security()
    r = b.post("/w/acme/logout", {"csrf_token": b.csrf()})
    r = b.get(r.headers["Location"])
    first, second = sorted([CRM, HR], key=lambda base: not r.headers["Location"].startswith(base))
    client, name = (crm, crm_name) if first == CRM else (hr, hr_name)
    back = local(sp_answers_redirect(client, r.headers["Location"], name, _idp_cert(app)))
    results = race(8, lambda: app.test_client().get(back))
    codes = sorted(x.status_code for x in results)
    assert codes == [302] + [400] * 7, codes
    nxt = next(x for x in results if x.status_code == 302)
    assert nxt.headers["Location"].startswith(second + "/slo?")
    with hub.db() as db:
        assert db.scalar(select(func.count()).select_from(SamlSessionParticipant)) == 0
