"""Signing key and certificate rollover: a staged key is published next to the current one, signs from its
set time on, and the old certificate leaves the metadata a week later. pysaml2 SPs check every step."""

from __future__ import annotations

import base64
import subprocess
import sys
from calendar import timegm
from datetime import UTC, datetime, timedelta

import pytest
from lxml import etree
from saml2 import BINDING_HTTP_POST
from saml2.sigver import SignatureError

from idp.accounts import workspace_by_slug
from saml.keys import MIN_PUBLISH, ROLLOVER_RETIRE
from saml.models import SamlKey
from tests.conftest import ALICE, Browser, make_app, make_settings
from tests.integration.test_saml_idp import (
    full_flow,
    idp_metadata,
    post_form,
    redirect_request,
    register,
    sp_client,
    sp_metadata,
)

MD = "{urn:oasis:names:tc:SAML:2.0:metadata}"
X509 = ".//{http://www.w3.org/2000/09/xmldsig#}X509Certificate"


@pytest.fixture
def env(tmp_path):
    return make_app(make_settings(tmp_path)), tmp_path


def published(app) -> list[str]:
    root = etree.fromstring(idp_metadata(app).encode())
    kds = root.findall(f"{MD}IDPSSODescriptor/{MD}KeyDescriptor")
    assert all(kd.get("use") == "signing" for kd in kds)
    return ["".join(kd.find(X509).text.split()) for kd in kds]


def signer(saml_response: str) -> str:
    root = etree.fromstring(base64.b64decode(saml_response))
    assertion = root.find("{urn:oasis:names:tc:SAML:2.0:assertion}Assertion")
    return "".join(assertion.find(X509).text.split())


def workspace(app):
    with app.extensions["idhub"].db() as db:
        ws = workspace_by_slug(db, "acme")
        db.expunge(ws)
    return ws


def test_rollover_publishes_then_switches_then_retires(env):
    app, tmp = env
    hub = app.extensions["idhub"]
    old_only = published(app)
    assert len(old_only) == 1
    old_sp = sp_client(tmp, idp_metadata(app), cn="old-sp")  # an SP that never refreshes its metadata
    real = hub.clock
    when = real() + MIN_PUBLISH + timedelta(minutes=1)
    hub.saml.keys.stage_next(workspace(app), when)
    both = published(app)
    assert len(both) == 2 and both[0] == old_only[0]
    new_cert = both[1]
    with hub.db() as db:
        row = db.query(SamlKey).one()
        assert row.next_private_enc.startswith("v1:") and "PRIVATE KEY" not in row.next_private_enc
    # an SP that fetched the metadata during the window knows both certificates
    client = sp_client(tmp, idp_metadata(app))
    register(app, [{"slug": "payroll", "name": "Payroll", "protocol": "saml", "metadata_xml": sp_metadata(client)}])
    b = Browser(app)
    reqid, url = redirect_request(client)
    _a, saml_response, _r = full_flow(app, b, lambda: b.get(url))
    assert signer(saml_response) == old_only[0]  # before the set time: the current key signs
    assert client.parse_authn_request_response(saml_response, BINDING_HTTP_POST, outstanding={reqid: "/"})
    set_time(hub, real() - timedelta(minutes=1))  # the set time has come
    reqid, url = redirect_request(client)
    _a, saml_response, _r = post_form(b.get(url))
    assert signer(saml_response) == new_cert
    resp = client.parse_authn_request_response(saml_response, BINDING_HTTP_POST, outstanding={reqid: "/"})
    assert resp.name_id.text == ALICE
    with pytest.raises(SignatureError):  # the control: only the old certificate does not verify it
        old_sp.parse_authn_request_response(saml_response, BINDING_HTTP_POST, outstanding={reqid: "/"})
    assert published(app) == both  # still both during the retirement week
    set_time(hub, real() - ROLLOVER_RETIRE - timedelta(minutes=1))  # a week later
    assert published(app) == [new_cert]
    with hub.db() as db:
        row = db.query(SamlKey).one()
        assert row.next_certificate is None and "".join(row.certificate.split()).find(new_cert[:60]) >= 0
    reqid, url = redirect_request(client)
    _a, saml_response, _r = post_form(b.get(url))
    assert signer(saml_response) == new_cert


def set_time(hub, when) -> None:
    """Move the staged key's switch time (instead of the clock: pysaml2 checks NotBefore against real time)."""
    with hub.db() as db:
        db.query(SamlKey).update({SamlKey.next_active_at: when})
        db.commit()
    hub.saml.keys._cache.clear()  # what CACHE_TTL does in a running server


def test_staging_needs_notice(env):
    app, _tmp = env
    hub = app.extensions["idhub"]
    with pytest.raises(ValueError, match="published at least"):
        hub.saml.keys.stage_next(workspace(app), hub.clock() + timedelta(minutes=5))
    assert len(published(app)) == 1


def test_notice_outlasts_every_copy_of_the_metadata_an_sp_may_rely_on(env):
    """An SP that fetched our metadata just before a key was staged may use that copy until its validUntil, or
    for its cacheDuration (plus HTTP caching) when it honours that: the staged key must not sign before every such
    copy has run out, so the SP's next fetch, which lists the new certificate, comes first."""
    from saml2.time_util import parse_duration, str_to_time

    app, tmp = env
    hub = app.extensions["idhub"]
    r = app.test_client().get("/w/acme/saml/metadata")
    fetched = hub.clock()
    root = etree.fromstring(r.data)
    valid_until = datetime.fromtimestamp(timegm(str_to_time(root.get("validUntil"))), UTC)
    sign_flag, cache = parse_duration(root.get("cacheDuration"))  # pysaml2's xs:duration parser
    assert sign_flag == "+" and root.get("cacheDuration") == "PT24H"
    cache = timedelta(days=cache["tm_mday"], hours=cache["tm_hour"], minutes=cache["tm_min"], seconds=cache["tm_sec"])
    max_age = timedelta(seconds=int(r.headers["Cache-Control"].split("max-age=")[1]))
    assert cache == timedelta(hours=24) and valid_until - fetched > cache  # validUntil is the longer window
    assert sp_client(tmp, r.get_data(as_text=True), cn="cache-sp")  # pysaml2 takes the metadata as it is
    # The earliest the next key may sign, one minute from the fetch: after every copy fetched so far has run out.
    earliest = hub.clock() + MIN_PUBLISH
    assert earliest > valid_until and earliest > fetched + cache + max_age
    for too_soon in (valid_until, fetched + cache + max_age, earliest - timedelta(minutes=1)):
        with pytest.raises(ValueError, match="validUntil") as refused:
            hub.saml.keys.stage_next(workspace(app), too_soon)
        assert "cacheDuration (PT24H)" in str(refused.value) and "the earliest is" in str(refused.value)
    assert len(published(app)) == 1
    new_cert = hub.saml.keys.stage_next(workspace(app), earliest + timedelta(seconds=5))
    assert "".join(new_cert.split()).find(published(app)[1][:60]) >= 0  # every fetch from now lists it


def test_rollover_command(tmp_path):
    """``python -m saml.rollover`` against a real database, as an operator runs it."""
    from tests.helpers.live import LiveHub

    hub = LiveHub({"workspaces": [{"slug": "acme", "name": "Acme", "plan": "enterprise"}]})
    try:
        hub.run("db", "upgrade")
        hub.run("apply", str(hub.write_config(hub.config)))
        run = lambda *a: subprocess.run([sys.executable, "-m", "saml.rollover", *a], env=hub.env,  # noqa: E731
                                        cwd=str(__import__("pathlib").Path(__file__).resolve().parents[2]),
                                        capture_output=True, text=True, timeout=120)
        r = run("status", "--workspace", "acme")
        assert r.returncode == 0 and r.stdout.startswith("current: ") and "next:" not in r.stdout, r.stderr
        r = run("stage", "--workspace", "acme", "--at", "2020-01-01T00:00:00Z")
        assert r.returncode == 1 and "published at least 7 days and 1 hour before it signs" in r.stderr
        assert "validUntil (7 days" in r.stderr and "cacheDuration (PT24H)" in r.stderr, r.stderr  # the rule
        soon = (datetime.now(UTC) + timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
        r = run("stage", "--workspace", "acme", "--at", soon)  # less than the metadata's validity away
        assert r.returncode == 1 and "the earliest is" in r.stderr, r.stderr
        r = run("stage", "--workspace", "acme", "--at", "2099-01-01T00:00:00Z")
        assert r.returncode == 0 and r.stdout.startswith("staged: "), r.stderr
        r = run("status", "--workspace", "acme")
        assert "next:" in r.stdout and "2099-01-01" in r.stdout
        assert "rule:    a new signing key is published 7 days and 1 hour before it signs" in r.stdout
        assert run("stage", "--workspace", "nope", "--at", "2099-01-01").returncode == 2
        r = hub.run("saml", "status", "--workspace", "acme")  # the same commands under `idhub saml`
        assert "next:" in r.stdout and "2099-01-01" in r.stdout, r.stderr
    finally:
        hub.cleanup()
