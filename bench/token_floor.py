"""The floor under idhub's token endpoint: a token endpoint that does only the unavoidable work, on idhub's stack.

Used by ``bench/oidc_tokens.py --floor`` (a third server in the same run, driven by the same client). It asks
what the issue's ratios could be if everything idhub does beyond this cost nothing: Flask under gunicorn
(``idhub serve``'s worker settings: ``--workers`` x 4 gthread threads), SQLAlchemy Core on PostgreSQL
(``idp.db.make_engine``, prebuilt statements, reads in autocommit as idhub's), joserfc RS256 signatures with an
RSA-2048 key (what idhub signs with) — and nothing else: no workspace, no policy engine, no session check, no
authlib, no security headers, no logging, no metrics.

- client_credentials: HTTP Basic, one read of the client row by id, a constant-time comparison of the secret's
  SHA-256, one signed access token (RFC 9068 claims). No write (a true lower bound). At ``/token?event=1`` the
  same plus the least an audited grant must do: one durable INSERT of an event row (autocommit: one round trip,
  committed when it returns), before the answer — no chain, no MAC, no sealing.
- refresh_token: the client as above; one read of the refresh token row with its user (a join); one transaction:
  the rotation (a conditional UPDATE, as idhub's replay-proof one), an access token row, the new refresh token
  row, an event row, commit; two signatures (access token and ID token).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, children, wait_listening

from tests.helpers.smtp import free_port

APP = r'''import base64, hashlib, hmac, json, os, secrets, sys, time, uuid
sys.path.insert(0, os.environ["FLOOR_REPO"])
from datetime import UTC, datetime, timedelta
from flask import Flask, request
from flask.sessions import SecureCookieSessionInterface
from joserfc import jwk, jwt
from sqlalchemy import Column, DateTime, MetaData, String, Table, bindparam, insert, select, update
from idp.db import make_engine, read_engine

app = Flask(__name__)


class NoSession(SecureCookieSessionInterface):
    def open_session(self, app, request):
        return self.session_class()

    def save_session(self, app, session, response):
        return None


app.session_interface = NoSession()
engine = make_engine(os.environ["FLOOR_DB"])
reads = read_engine(engine)
md = MetaData()
clients = Table("floor_clients", md, Column("client_id", String, primary_key=True), Column("secret_hash", String))
users = Table("floor_users", md, Column("id", String, primary_key=True), Column("email", String),
              Column("name", String))
refresh = Table("floor_refresh", md, Column("token_hash", String, primary_key=True), Column("user_id", String),
                Column("client_id", String), Column("scope", String), Column("used_at", DateTime(timezone=True)),
                Column("expires_at", DateTime(timezone=True)))
access = Table("floor_access", md, Column("jti", String, primary_key=True), Column("user_id", String),
               Column("client_id", String), Column("expires_at", DateTime(timezone=True)))
events = Table("floor_events", md, Column("id", String, primary_key=True), Column("type", String),
               Column("actor", String), Column("data", String), Column("at", DateTime(timezone=True)))
CLIENT = select(clients.c.secret_hash).where(clients.c.client_id == bindparam("c"))
TOKEN = (select(refresh.c.user_id, refresh.c.client_id, refresh.c.scope, refresh.c.used_at, refresh.c.expires_at,
                users.c.email, users.c.name)
         .join(users, users.c.id == refresh.c.user_id).where(refresh.c.token_hash == bindparam("h")))
ROTATE = (update(refresh).where(refresh.c.token_hash == bindparam("h"), refresh.c.used_at.is_(None))
          .values(used_at=bindparam("now")))
ADD_ACCESS, ADD_REFRESH, ADD_EVENT = insert(access), insert(refresh), insert(events)
KEY = jwk.RSAKey.import_key(open(os.environ["FLOOR_KEY"]).read())
ISS = "http://floor.bench.test"


def error(code, status=400):
    return app.response_class(json.dumps({"error": code}), status, mimetype="application/json")


def sign(claims, typ="JWT"):
    return jwt.encode({"alg": "RS256", "typ": typ, "kid": "floor"}, claims, KEY)


@app.post("/token")
def token():
    auth = request.headers.get("Authorization", "")
    try:
        client_id, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
    except ValueError:
        return error("invalid_client", 401)
    with reads.connect() as c:
        stored = c.execute(CLIENT, {"c": client_id}).scalar()
    if stored is None or not hmac.compare_digest(stored, hashlib.sha256(secret.encode()).hexdigest()):
        return error("invalid_client", 401)
    now = datetime.now(UTC)
    ts = int(now.timestamp())
    grant = request.form.get("grant_type")
    if grant == "client_credentials":
        jti = secrets.token_urlsafe(24)
        out = {"access_token": sign({"iss": ISS, "sub": client_id, "aud": client_id, "client_id": client_id,
                                     "iat": ts, "exp": ts + 300, "jti": jti, "scope": ""}, "at+jwt"),
               "token_type": "Bearer", "expires_in": 300}
        if request.args.get("event"):  # the grant's event, durable before the answer
            with reads.connect() as c:
                c.execute(ADD_EVENT, {"id": str(uuid.uuid4()), "type": "oidc.token.issued", "actor": client_id,
                                      "data": json.dumps({"client": client_id, "refresh": False}), "at": now})
        return app.response_class(json.dumps(out), 200, mimetype="application/json")
    if grant != "refresh_token":
        return error("unsupported_grant_type")
    presented = request.form.get("refresh_token") or ""
    h = hashlib.sha256(presented.encode()).hexdigest()
    with reads.connect() as c:
        row = c.execute(TOKEN, {"h": h}).first()
    if row is None or row.client_id != client_id or row.used_at is not None or row.expires_at <= now:
        return error("invalid_grant")
    jti, rt = secrets.token_urlsafe(24), secrets.token_urlsafe(32)
    at = sign({"iss": ISS, "sub": row.user_id, "aud": client_id, "client_id": client_id, "iat": ts,
               "exp": ts + 300, "jti": jti, "scope": row.scope}, "at+jwt")
    idt = sign({"iss": ISS, "sub": row.user_id, "aud": client_id, "azp": client_id, "iat": ts, "exp": ts + 3600,
                "email": row.email, "name": row.name})
    with engine.connect() as c:
        if c.execute(ROTATE, {"h": h, "now": now}).rowcount != 1:
            c.rollback()
            return error("invalid_grant")
        c.execute(ADD_ACCESS, {"jti": jti, "user_id": row.user_id, "client_id": client_id,
                               "expires_at": now + timedelta(seconds=300)})
        c.execute(ADD_REFRESH, {"token_hash": hashlib.sha256(rt.encode()).hexdigest(), "user_id": row.user_id,
                                "client_id": client_id, "scope": row.scope, "used_at": None,
                                "expires_at": now + timedelta(days=30)})
        c.execute(ADD_EVENT, {"id": str(uuid.uuid4()), "type": "oidc.token.issued", "actor": row.user_id,
                              "data": json.dumps({"client": client_id, "refresh": True}), "at": now})
        c.commit()
    out = {"access_token": at, "token_type": "Bearer", "expires_in": 300, "refresh_token": rt, "id_token": idt,
           "scope": row.scope}
    return app.response_class(json.dumps(out), 200, mimetype="application/json")
'''

SCHEMA = """
CREATE TABLE floor_clients (client_id varchar PRIMARY KEY, secret_hash varchar NOT NULL);
CREATE TABLE floor_users (id varchar PRIMARY KEY, email varchar, name varchar);
CREATE TABLE floor_refresh (token_hash varchar PRIMARY KEY, user_id varchar NOT NULL, client_id varchar NOT NULL,
                            scope varchar, used_at timestamptz, expires_at timestamptz NOT NULL);
CREATE TABLE floor_access (jti varchar PRIMARY KEY, user_id varchar, client_id varchar, expires_at timestamptz);
CREATE TABLE floor_events (id varchar PRIMARY KEY, type varchar, actor varchar, data text, at timestamptz);
"""


class FloorServer:
    """The floor app under gunicorn on ``db_url`` (PostgreSQL; its ``floor_*`` tables are created here)."""

    def __init__(self, db_url: str, workers: int, client_id: str, secret: str, n_tokens: int, workdir: Path):
        import hashlib

        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from sqlalchemy import create_engine, text

        eng = create_engine(db_url)
        with eng.begin() as c:
            for stmt in SCHEMA.split(";"):
                if stmt.strip():
                    c.execute(text(stmt))
            c.execute(text("INSERT INTO floor_clients VALUES (:c, :s)"),
                      {"c": client_id, "s": hashlib.sha256(secret.encode()).hexdigest()})
            c.execute(text("INSERT INTO floor_users VALUES ('u0', 'user0@bench.test', 'User Zero')"))
            self.refresh_tokens = [secrets.token_urlsafe(32) for _ in range(n_tokens)]
            for rt in self.refresh_tokens:
                c.execute(text("INSERT INTO floor_refresh VALUES (:h, 'u0', :c, 'openid email profile offline_access',"
                               " NULL, now() + interval '30 days')"),
                          {"h": hashlib.sha256(rt.encode()).hexdigest(), "c": client_id})
        eng.dispose()
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = workdir / "floor-key.pem"
        pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
        (workdir / "floor.py").write_text(APP)
        port = free_port()
        env = {**os.environ, "FLOOR_REPO": str(REPO), "FLOOR_DB": db_url, "FLOOR_KEY": str(pem)}
        gunicorn = str(Path(sys.executable).parent / "gunicorn")
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([gunicorn, "-k", "gthread", "-w", str(workers), "--threads", "4",
                                      "-b", f"127.0.0.1:{port}", "--worker-tmp-dir", "/dev/shm", "floor:app"],
                                     cwd=workdir, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.base = f"http://127.0.0.1:{port}"
        wait_listening(self.proc, port, "the token floor server", log=self.log)
        while len(children(self.proc.pid)) < workers:
            time.sleep(0.1)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()
