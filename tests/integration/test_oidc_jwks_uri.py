"""``private_key_jwt`` clients that register a ``jwks_uri``: a real local HTTP server plays the client's key
server. The OP fetches it (https, or http on loopback only), caches it, fetches once more when an assertion
names an unknown ``kid`` (the client rotated its key — but not more often than every 10 s), never follows a
redirect to another origin, and refuses oversized or malformed answers."""

from __future__ import annotations

import json
import secrets
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from idp.configfile import ConfigError, validate
from tests.interop.oidc_support import apply_apps, make_oidc_app, oidc_config

TOKEN_URL = "http://localhost/w/acme/oauth2/token"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
KEY_1 = RSAKey.generate_key(2048, private=True, parameters={"kid": "k1"})
KEY_2 = RSAKey.generate_key(2048, private=True, parameters={"kid": "k2"})


def public(*keys) -> dict:
    return {"keys": [{**k.as_dict(private=False), "use": "sig", "alg": "RS256"} for k in keys]}


class KeyServer:
    """The client's key server: /jwks.json, plus misbehaving paths."""

    def __init__(self):
        self.jwks = public(KEY_1)
        self.hits: dict[str, int] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.hits[self.path] = outer.hits.get(self.path, 0) + 1
                port = self.server.server_address[1]
                if self.path == "/same-origin-redirect":
                    return self._redirect(f"http://127.0.0.1:{port}/jwks.json")
                if self.path == "/other-origin-redirect":  # "localhost" is another origin than 127.0.0.1
                    return self._redirect(f"http://localhost:{port}/jwks.json")
                if self.path == "/redirect-loop":
                    return self._redirect("/redirect-loop")
                if self.path == "/huge":
                    return self._send(json.dumps({"keys": [], "pad": "x" * 70000}).encode())
                if self.path == "/not-json":
                    return self._send(b"<html>oops</html>")
                if self.path == "/jwks.json":
                    return self._send(json.dumps(outer.jwks).encode())
                self.send_response(404)
                self.end_headers()

            def _redirect(self, location):
                self.send_response(302)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _send(self, body: bytes):
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def keys():
    srv = KeyServer()
    yield srv
    srv.close()


CLIENTS = {"rotating": "/jwks.json", "same": "/same-origin-redirect", "other": "/other-origin-redirect",
           "loop": "/redirect-loop", "huge": "/huge", "junk": "/not-json"}


@pytest.fixture
def app(settings, keys):
    app = make_oidc_app(settings)
    cfg = oidc_config()
    cfg["workspaces"][0]["apps"] += [
        {"slug": cid, "name": cid, "protocol": "oidc", "client_id": cid, "token_endpoint_auth_method":
         "private_key_jwt", "jwks_uri": keys.base + path, "grant_types": ["client_credentials"]}
        for cid, path in CLIENTS.items()]
    with app.extensions["idhub"].db() as db:
        apply_apps(db, cfg)
    return app


def grant(app, client_id: str, key) -> int:
    now = int(app.extensions["idhub"].clock().timestamp())  # the hub's clock (the tests move it)
    claims = {"iss": client_id, "sub": client_id, "aud": TOKEN_URL, "iat": now, "exp": now + 120,
              "jti": secrets.token_urlsafe(16)}
    assertion = jwt.encode({"alg": "RS256", "kid": key.kid}, claims, key, algorithms=["RS256"])
    r = app.test_client().post("/w/acme/oauth2/token", data={
        "grant_type": "client_credentials", "client_assertion_type": JWT_BEARER, "client_assertion": assertion})
    if r.status_code != 200:
        assert r.get_json()["error"] == "invalid_client", r.get_json()
    return r.status_code


def advance(hub, seconds: float):
    base = hub.clock()
    hub.clock = lambda: base + timedelta(seconds=seconds)


def test_client_key_rotation(app, keys):
    hub = app.extensions["idhub"]
    assert grant(app, "rotating", KEY_1) == 200
    assert grant(app, "rotating", KEY_1) == 200
    assert keys.hits["/jwks.json"] == 1  # cached
    # the client rotates: its server now publishes the new key next to the old one
    keys.jwks = public(KEY_2, KEY_1)
    # an unknown kid right after a fetch: no new fetch yet (made-up kids cannot make us hammer the server)
    assert grant(app, "rotating", KEY_2) == 401
    assert keys.hits["/jwks.json"] == 1
    # a little later: the unknown kid makes the OP fetch once more, and the new key works
    advance(hub, 11)
    assert grant(app, "rotating", KEY_2) == 200
    assert keys.hits["/jwks.json"] == 2
    assert grant(app, "rotating", KEY_1) == 200  # the overlap: both keys
    assert keys.hits["/jwks.json"] == 2
    # the old key leaves the client's JWKS; after our cache's TTL it is refused
    keys.jwks = public(KEY_2)
    advance(hub, 11 + 301)
    assert grant(app, "rotating", KEY_2) == 200
    assert keys.hits["/jwks.json"] == 3
    assert grant(app, "rotating", KEY_1) == 401


def test_key_server_down_keeps_the_cached_keys(app, keys):
    hub = app.extensions["idhub"]
    assert grant(app, "rotating", KEY_1) == 200
    keys.close()
    advance(hub, 400)
    assert grant(app, "rotating", KEY_1) == 200  # stale but known keys, rather than locking the client out


def test_redirects(app, keys):
    assert grant(app, "same", KEY_1) == 200  # same origin: followed
    assert keys.hits["/jwks.json"] == 1
    assert grant(app, "other", KEY_1) == 401  # another origin: not followed
    assert keys.hits["/jwks.json"] == 1
    assert grant(app, "loop", KEY_1) == 401
    assert grant(app, "loop", KEY_1) == 401
    assert keys.hits["/redirect-loop"] <= 2  # a loop is cut at once, and a failed fetch is not retried at once
    assert grant(app, "other", KEY_1) == 401
    assert keys.hits["/other-origin-redirect"] == 1


def test_oversized_and_malformed_answers(app, keys):
    assert grant(app, "huge", KEY_1) == 401
    assert grant(app, "junk", KEY_1) == 401


def test_fetch_refuses_urls_outside_https_or_loopback():
    from oidc.provider import fetch_jwks

    for bad in ("http://example.com/jwks", "ftp://127.0.0.1/jwks", "http://user:pw@127.0.0.1/jwks",
                "http://10.0.0.1/jwks", "file:///etc/passwd"):
        with pytest.raises(ValueError):
            fetch_jwks(bad)


def _cfg(uri: str) -> dict:
    cfg = oidc_config()
    cfg["workspaces"][0]["apps"].append(
        {"slug": "signer", "name": "Signer", "protocol": "oidc", "client_id": "signer",
         "token_endpoint_auth_method": "private_key_jwt", "jwks_uri": uri, "grant_types": ["client_credentials"]})
    return cfg


@pytest.mark.parametrize("uri", ["http://signer.example/jwks", "http://10.1.2.3/jwks",
                                 "https://user:pw@signer.example/jwks", "http://169.254.169.254/jwks"])
def test_config_refuses_jwks_uri(uri):
    with pytest.raises(ConfigError) as err:
        validate(_cfg(uri))
    assert "jwks_uri" in str(err.value)


@pytest.mark.parametrize("uri", ["https://signer.example/jwks", "http://127.0.0.1:8080/jwks",
                                 "http://localhost/jwks", "http://[::1]:9000/jwks"])
def test_config_accepts_jwks_uri(uri):
    validate(_cfg(uri))
