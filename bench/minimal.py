"""The least a password sign-in and a signed SAML response can cost on idhub's stack, against the same peers.

    .venv/bin/python bench/minimal.py [--seconds 8] [--concurrency 2]

The targets of bench/signin.py (a sign-in within +15 % of one argon2id verify) and bench/saml_sso.py (10x
pysaml2) are ratios against peers; this asks what the ratio would be for an application that does *only* the
unavoidable part on the same stack — Flask under gunicorn (``idhub serve``'s worker and settings: ``concurrency``
workers x 4 threads), SQLAlchemy on SQLite (idhub's engine and pragmas), idhub's argon2id ``Hasher`` and its
python-xmlsec ``saml.xml.sign`` — and nothing else: no workspace, no policy, no throttle, no CSRF check, no audit
log, no session store, no security headers, no logging, no metrics.

- *minimal sign-in*: GET a page with an email/password form, POST it: one argon2id verify of a stored hash,
  one INSERT of a session row, a 302 with a cookie. Against ``idp.passwords.Hasher().verify`` in
  ``concurrency`` processes, half before and half after (as bench/signin.py).
- *minimal SSO response*: GET -> an assertion with idhub's shape (issuer, NameID, subject confirmation,
  conditions, authn statement, three attributes) built with lxml, signed with ``saml.xml.sign`` (RSA-3072,
  exclusive c14n, RSA-SHA256), wrapped in a Response, base64, in an auto-post HTML form. Against pysaml2's IdP
  (bench/saml_sso.py's peer) in the same run. *Minimal SSO + its event*: the same, plus the least an audited
  response adds: one durable INSERT of an event row (its own transaction, committed before the answer; no chain,
  no MAC).

Server CPU from /proc (arbiter + workers), as in the other benchmarks. The printed ratios are ceilings: what
idhub's ratios could be if everything it does beyond this cost nothing.
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

from _common import PASSWORD, REPO, argon2_peer, children, cpu_delta, loadavg, tree_cpu
from saml_sso import _keypair, peer_setup, run_peer
from signin import CSRF, LeanBrowser

from tests.helpers.smtp import free_port

APP = '''import base64, os, secrets, sys
sys.path.insert(0, os.environ["MINI_REPO"])
from datetime import UTC, datetime, timedelta
from flask import Flask, redirect, request
from flask.sessions import SecureCookieSessionInterface
from lxml import etree
from sqlalchemy import text
from idp.db import make_engine
from idp.passwords import Hasher
from saml.xml import sign

app = Flask(__name__)


class NoSession(SecureCookieSessionInterface):  # no cookie session at all: nothing to build, read or write
    def open_session(self, app, request):
        return self.session_class()

    def save_session(self, app, session, response):
        return None


app.session_interface = NoSession()
engine = make_engine(os.environ["MINI_DB"])
hasher = Hasher()
STORED = os.environ["MINI_HASH"]
KEY = open(os.environ["MINI_KEY"], "rb").read()
CERT = open(os.environ["MINI_CERT"]).read()
SAML, SAMLP = "urn:oasis:names:tc:SAML:2.0:assertion", "urn:oasis:names:tc:SAML:2.0:protocol"
FORM = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Sign in</title></head><body>
<form method="post"><input type="hidden" name="csrf_token" value="{{ t }}">
<label for="email">Email</label><input id="email" name="email" type="email">
<label for="password">Password</label><input id="password" name="password" type="password">
<button type="submit">Sign in</button></form></body></html>"""
POST = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Signed in</title></head><body>
<form method="post" action="https://sp.bench.test/saml/acs"><input type="hidden" name="SAMLResponse" value="{{ v }}">
<input type="hidden" name="RelayState" value="bench"><button type="submit">Continue</button></form></body></html>"""
FORM_T, POST_T = app.jinja_env.from_string(FORM), app.jinja_env.from_string(POST)  # compiled once, as files are


@app.get("/login")
def page():
    return FORM_T.render(t=secrets.token_urlsafe(32))


@app.post("/login")
def login():
    if not hasher.verify(STORED, request.form.get("password", "")):
        return "no", 401
    token = secrets.token_urlsafe(32)
    with engine.begin() as c:
        c.execute(text("INSERT INTO sessions (id, created) VALUES (:i, :t)"),
                  {"i": token, "t": datetime.now(UTC).isoformat()})
    resp = redirect("/home")
    resp.set_cookie("s", token, httponly=True, samesite="Lax")
    return resp


def _e(parent, tag, text_=None, **attrs):
    el = etree.SubElement(parent, "{%s}%s" % (SAML, tag), **attrs)
    if text_ is not None:
        el.text = text_
    return el


@app.get("/sso")
def sso():
    now = datetime.now(UTC)
    ts = lambda d: d.strftime("%Y-%m-%dT%H:%M:%SZ")
    resp = etree.Element("{%s}Response" % SAMLP, nsmap={"samlp": SAMLP, "saml": SAML}, ID="_" + secrets.token_hex(16),
                         Version="2.0", IssueInstant=ts(now), Destination="https://sp.bench.test/saml/acs")
    _e(resp, "Issuer", "https://idp.bench.test/saml")
    st = etree.SubElement(resp, "{%s}Status" % SAMLP)
    etree.SubElement(st, "{%s}StatusCode" % SAMLP, Value="urn:oasis:names:tc:SAML:2.0:status:Success")
    a = _e(resp, "Assertion", ID="_" + secrets.token_hex(16), Version="2.0", IssueInstant=ts(now))
    issuer = _e(a, "Issuer", "https://idp.bench.test/saml")
    subject = _e(a, "Subject")
    _e(subject, "NameID", "user0@bench.test", Format="urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress")
    sc = _e(subject, "SubjectConfirmation", Method="urn:oasis:names:tc:SAML:2.0:cm:bearer")
    _e(sc, "SubjectConfirmationData", NotOnOrAfter=ts(now + timedelta(minutes=5)),
       Recipient="https://sp.bench.test/saml/acs", InResponseTo="_" + secrets.token_hex(16))
    cond = _e(a, "Conditions", NotBefore=ts(now), NotOnOrAfter=ts(now + timedelta(minutes=5)))
    _e(_e(cond, "AudienceRestriction"), "Audience", "https://sp.bench.test/saml/metadata")
    stmt = _e(a, "AuthnStatement", AuthnInstant=ts(now), SessionIndex="_s" + secrets.token_hex(20))
    _e(_e(stmt, "AuthnContext"), "AuthnContextClassRef",
       "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport")
    attrs = _e(a, "AttributeStatement")
    for name, value in (("email", "user0@bench.test"), ("name", "Bench User"), ("groups", "engineering")):
        _e(_e(attrs, "Attribute", Name=name), "AttributeValue", value)
    sign(a, KEY, CERT, after=issuer)
    value = base64.b64encode(etree.tostring(resp, xml_declaration=True, encoding="UTF-8")).decode()
    if request.args.get("event"):  # the least an audited SSO adds: its event, durable before the answer
        with engine.begin() as c:
            c.execute(text("INSERT INTO events (type, occurred_at, data) VALUES (:t, :o, :d)"),
                      {"t": "saml.sso", "o": now.isoformat(), "d": '{"sp": "https://sp.bench.test/saml/metadata"}'})
    return POST_T.render(v=value)
'''


def start_app(d: Path, workers: int):
    import os
    import subprocess
    import sys

    from idp.passwords import Hasher

    db = d / "mini.db"
    with sqlite3.connect(db) as c:
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("CREATE TABLE sessions (id TEXT PRIMARY KEY, created TEXT)")
        c.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, type TEXT, occurred_at TEXT, data TEXT)")
    key, cert = _keypair(d, "mini-idp", 3072)
    (d / "mini.py").write_text(APP)
    port = free_port()
    env = {**os.environ, "MINI_REPO": str(REPO), "MINI_DB": f"sqlite:///{db}", "MINI_HASH": Hasher().hash(PASSWORD),
           "MINI_KEY": key, "MINI_CERT": cert}
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    proc = subprocess.Popen([gunicorn, "-k", "gthread", "-w", str(workers), "--threads", "4",
                             "-b", f"127.0.0.1:{port}", "--worker-tmp-dir", "/dev/shm", "mini:app"], cwd=d, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            b = LeanBrowser(base)
            b.get("/login")
            b.close()
            break
        except OSError:
            time.sleep(0.1)
    while len(children(proc.pid)) < workers:
        time.sleep(0.1)
    return proc, base


def drive(base: str, work, seconds: float, concurrency: int) -> int:
    done = [0]
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def worker():
        b = LeanBrowser(base)
        while time.perf_counter() < stop:
            work(b)
            with lock:
                done[0] += 1
        b.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return done[0]


def sign_in(b: LeanBrowser) -> None:
    _, _, page = b.get("/login")
    status, _, _ = b.post("/login", {"email": "user0@bench.test", "password": PASSWORD,
                                     "csrf_token": CSRF.search(page).group(1)})
    assert status == 302 and "s" in b.cookies, status
    b.cookies.clear()


def sso(b: LeanBrowser) -> None:
    status, _, page = b.get("/sso")
    assert status == 200 and 'name="SAMLResponse"' in page, status


def sso_event(b: LeanBrowser) -> None:
    status, _, page = b.get("/sso?event=1")
    assert status == 200 and 'name="SAMLResponse"' in page, status


def measure(proc, base: str, work, seconds: float, concurrency: int) -> float:
    drive(base, work, 1.5, concurrency)  # warm-up
    before = tree_cpu(proc.pid)
    n = drive(base, work, seconds, concurrency)
    return cpu_delta(before, tree_cpu(proc.pid)) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--concurrency", type=int, default=2)
    a = ap.parse_args()
    n = a.concurrency
    print(f"minimal flows on idhub's stack  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  {n} clients, "
          f"{n} gunicorn workers x 4 threads  load {loadavg()} (start)", flush=True)
    with tempfile.TemporaryDirectory(prefix="minimal-bench-") as tmp:
        d = Path(tmp)
        peer_a = argon2_peer(a.seconds / 2, n)
        proc, base = start_app(d, n)
        try:
            signin_cpu = measure(proc, base, sign_in, a.seconds, n)
            sso_cpu = measure(proc, base, sso, a.seconds, n)
            event_cpu = measure(proc, base, sso_event, a.seconds, n)
        finally:
            proc.terminate()
            proc.wait(10)
        peer_b = argon2_peer(a.seconds / 2, n)
        verify = (peer_a["cpu_per_op"] + peer_b["cpu_per_op"]) / 2
        setup = peer_setup(d)
        peer_lat, _wall, peer_cpu = run_peer(setup, a.seconds, n)
    pysaml2 = peer_cpu / len(peer_lat)
    print(f"  minimal sign-in (GET + POST)   server CPU {signin_cpu * 1000:6.2f} ms   argon2id verify "
          f"{verify * 1000:6.2f} ms   ratio {signin_cpu / verify:5.3f}  (idhub's target: <= 1.15)")
    print(f"  minimal SSO response           server CPU {sso_cpu * 1000:6.2f} ms   pysaml2 "
          f"{pysaml2 * 1000:6.2f} ms   ratio {pysaml2 / sso_cpu:5.1f}x  (idhub's goal: >= 10x)")
    print(f"  minimal SSO + its event        server CPU {event_cpu * 1000:6.2f} ms   pysaml2 "
          f"{pysaml2 * 1000:6.2f} ms   ratio {pysaml2 / event_cpu:5.1f}x  (one durable INSERT before the answer)")
    print(f"  load at end {loadavg()}   (the ratios are ceilings for an app doing only this)")


if __name__ == "__main__":
    main()
