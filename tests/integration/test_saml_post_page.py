"""The page that posts a SAML message to an app is assembled from parts of saml_post.html rendered once
(saml.web._render_form): it must be exactly what the template renders, for any value, and carry nothing of the
request that first rendered the parts."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from flask import flash, render_template

from saml import web as saml_web
from tests.conftest import make_app, make_settings

HOSTILE = ['https://sp.test/acs?a=1&b="2"<x>', "PHNhbWw+" * 700, "r&s<t>'\"\u00e9\u2713", "", " "]


@pytest.fixture
def app(tmp_path):
    return make_app(make_settings(tmp_path))


@pytest.mark.parametrize("relay", [None, "", "state&<>\"'", "x" * 5000])
def test_the_assembled_page_is_the_template_byte_for_byte(app, relay):
    ws = SimpleNamespace(slug="acme", name="Acme <Corp> & \"Co\"")
    saml_web._frames.clear()
    for url in HOSTILE[:1] + ["https://sp.test/acs"]:
        for value in HOSTILE:
            with app.test_request_context("/w/acme/saml/sso"):
                full = render_template("saml_post.html", ws=ws, acs_url=url, field="SAMLResponse",
                                       saml_response=value, relay_state=relay, heading=None, message=None)
            with app.test_request_context("/w/acme/saml/sso"):
                fast = saml_web._render_form(ws, url, "SAMLResponse", value, relay, None, None)
            assert str(fast) == str(full)
    assert any(v is not None for v in saml_web._frames.values())  # the parts were used, not a full render each time


def test_a_page_keeps_nothing_of_the_request_that_rendered_its_parts(app):
    ws = SimpleNamespace(slug="acme", name="Acme")
    saml_web._frames.clear()
    with app.test_request_context("/w/acme/saml/sso"):
        flash("first user's notice")  # a page with flashes is rendered in full, and its flash is not kept
        first = saml_web._render_form(ws, "https://sp.test/acs", "SAMLResponse", "AAA-first", "rs1", None, None)
        assert "first user&#39;s notice" in first or "first user's notice" in first
    with app.test_request_context("/w/acme/saml/sso"):
        saml_web._render_form(ws, "https://sp.test/acs", "SAMLResponse", "AAA-second", "rs2", None, None)
    with app.test_request_context("/w/acme/saml/sso"):
        third = saml_web._render_form(ws, "https://sp.test/acs", "SAMLResponse", "BBB-third", "rs3", None, None)
    assert "BBB-third" in third and "rs3" in third
    assert "AAA" not in third and "rs2" not in third and "notice" not in third and "csrf_token" not in third
