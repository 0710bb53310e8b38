"""Signed SAML Responses per second through idhub's HTTP endpoint, side by side with pysaml2's IdP.

    .venv/bin/python bench/saml_sso.py [--seconds 10] [--peer-seconds 10] [--concurrency 2]
                                       [--db sqlite|postgres] [--redis]

idhub: a real ``idhub serve`` (gunicorn, ``--workers`` = concurrency) with one SAML app; one user signs in
through the real pages once, then ``concurrency`` client threads send SP-initiated HTTP-Redirect AuthnRequests
(a fresh ID each) to ``/w/bench/saml/sso`` with that session and read the auto-submitting POST page holding the
signed Response (RSA-3072, RSA-SHA256, exclusive c14n; policy decision, audit event and session-participant
record included). Every answer is checked for a signed SAMLResponse.

pysaml2 (the peer, its default configuration: the ``xmlsec1`` binary as the crypto backend): ``Server``
with the same SP in its metadata and an RSA-3072 key parses the same kind of Redirect AuthnRequest
(``parse_authn_request``), builds and signs the assertion (``create_authn_response(..., sign_assertion=True)``)
and renders the HTTP-POST form (``apply_binding``), in ``concurrency`` processes on the same machine in the
same run. No HTTP, no session and no database on its side: the ratio flatters the peer.

Prints throughput and latency of both and the ratio idhub ÷ pysaml2 (goal: at least 10).
"""

from __future__ import annotations

import argparse
import base64
import multiprocessing as mp
import re
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from _common import PASSWORD, children, cpu_delta, loadavg, pct, tree_cpu
from signin import CSRF, FLOW, LeanBrowser

from tests.helpers.live import LiveHub

SP_ENTITY = "https://sp.bench.test/saml/metadata"
ACS = "https://sp.bench.test/saml/acs"
RESPONSE_RE = re.compile(r'name="SAMLResponse" value="([^"]+)"')


def config() -> dict:
    return {"workspaces": [{
        "slug": "bench", "name": "Bench", "plan": "enterprise",
        "groups": [{"name": "engineering"}],
        "users": [{"email": "user0@bench.test", "name": "Bench User", "password": PASSWORD,
                   "groups": ["engineering"]}],
        "apps": [{"slug": "sp", "name": "Bench SP", "protocol": "saml", "entity_id": SP_ENTITY, "acs_url": ACS}],
    }]}


def authn_request(destination: str) -> str:
    xml = (f'<samlp:AuthnRequest xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" '
           f'xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" ID="_{secrets.token_hex(16)}" Version="2.0" '
           f'IssueInstant="{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}" Destination="{destination}" '
           f'AssertionConsumerServiceURL="{ACS}" '
           f'ProtocolBinding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST">'
           f'<saml:Issuer>{SP_ENTITY}</saml:Issuer>'
           f'<samlp:NameIDPolicy Format="urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress" '
           f'AllowCreate="true"/></samlp:AuthnRequest>').encode()
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return base64.b64encode(c.compress(xml) + c.flush()).decode()


# ---- idhub over HTTP ------------------------------------------------------------------------------
def _one(b: LeanBrowser, dest: str) -> float:
    query = urlencode({"SAMLRequest": authn_request(dest), "RelayState": "bench"})
    t = time.perf_counter()
    status, _loc, page = b.get("/w/bench/saml/sso?" + query)
    dt = time.perf_counter() - t
    m = RESPONSE_RE.search(page) if status == 200 else None
    if m is None or b"SignatureValue" not in base64.b64decode(m.group(1)):
        raise AssertionError(f"no signed SAMLResponse: {status} {page[:300]}")
    return dt


def spread_clients(hub: LiveHub, cookies: dict, concurrency: int, tries: int = 30) -> list[LeanBrowser]:
    """``concurrency`` keep-alive connections spread over the gunicorn workers as many clients would spread
    (a worker takes whichever connection it accepts first, so two connections often land on one worker, which
    then serves both while the other idles: the figures of such a run differ by 20 %). Each connection is tried
    with a few requests and reopened while its worker already has its share (the worker is the one whose CPU
    moved)."""
    dest, root = hub.url("/w/bench/saml/sso"), hub.proc.pid
    workers = len(children(root))
    share = -(-concurrency // max(workers, 1))
    taken: dict[int, int] = {}
    browsers = []
    for _ in range(concurrency):
        for _attempt in range(tries):
            b = LeanBrowser(hub.base_url)
            b.cookies.update(cookies)
            before = tree_cpu(root)
            for _ in range(10):
                _one(b, dest)
            after = tree_cpu(root)
            pid = max((p for p in after if p != root), key=lambda p: after[p] - before.get(p, 0.0))
            if taken.get(pid, 0) < share:
                taken[pid] = taken.get(pid, 0) + 1
                browsers.append(b)
                break
            b.close()
        else:
            browsers.append(b := LeanBrowser(hub.base_url))
            b.cookies.update(cookies)
    return browsers


def drive_hub(hub: LiveHub, browsers: list[LeanBrowser], seconds: float) -> tuple[list[float], float]:
    lat: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    dest = hub.url("/w/bench/saml/sso")

    def worker(b: LeanBrowser):
        try:
            while time.perf_counter() < stop:
                dt = _one(b, dest)
                with lock:
                    lat.append(dt)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    t0 = time.perf_counter()
    stop = t0 + seconds
    threads = [threading.Thread(target=worker, args=(b,)) for b in browsers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return lat, time.perf_counter() - t0


# ---- pysaml2's IdP ---------------------------------------------------------------------------------
def _keypair(d: Path, cn: str, bits: int) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=30)).sign(key, hashes.SHA256()))
    kf, cf = d / f"{cn}.key", d / f"{cn}.crt"
    kf.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                     serialization.NoEncryption()))
    cf.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(kf), str(cf)


IDP_ENTITY = "https://idp.bench.test/saml"
IDP_SSO = "https://idp.bench.test/saml/sso"


def peer_setup(d: Path) -> dict:
    """Key files and the SP's metadata, made once in the parent."""
    from saml2 import BINDING_HTTP_POST
    from saml2.config import SPConfig
    from saml2.metadata import entity_descriptor

    sp_key, sp_cert = _keypair(d, "sp", 2048)
    idp_key, idp_cert = _keypair(d, "idp", 3072)
    sp = SPConfig()
    sp.load({"entityid": SP_ENTITY, "key_file": sp_key, "cert_file": sp_cert,
             "service": {"sp": {"endpoints": {"assertion_consumer_service": [(ACS, BINDING_HTTP_POST)]}}}})
    md = d / "sp.xml"
    md.write_text(str(entity_descriptor(sp)))
    return {"idp_key": idp_key, "idp_cert": idp_cert, "sp_metadata": str(md)}


def peer_worker(setup: dict, seconds: float, start, out) -> None:
    from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT
    from saml2.config import IdPConfig
    from saml2.saml import NAMEID_FORMAT_EMAILADDRESS, NameID
    from saml2.server import Server

    cfg = IdPConfig()
    cfg.load({"entityid": IDP_ENTITY, "key_file": setup["idp_key"], "cert_file": setup["idp_cert"],
              "metadata": {"local": [setup["sp_metadata"]]},
              "service": {"idp": {"endpoints": {"single_sign_on_service": [(IDP_SSO, BINDING_HTTP_REDIRECT)]},
                                  "name_id_format": [NAMEID_FORMAT_EMAILADDRESS]}}})
    server = Server(config=cfg)
    identity = {"email": ["user0@bench.test"], "name": ["Bench User"], "groups": ["engineering"]}
    authn = {"class_ref": "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport",
             "authn_auth": IDP_ENTITY}

    def one():
        req = server.parse_authn_request(authn_request(IDP_SSO), BINDING_HTTP_REDIRECT)
        msg = req.message
        resp = server.create_authn_response(
            identity, in_response_to=msg.id, destination=msg.assertion_consumer_service_url,
            sp_entity_id=msg.issuer.text, name_id=NameID(format=NAMEID_FORMAT_EMAILADDRESS, text="user0@bench.test"),
            authn=authn, sign_assertion=True)
        http = server.apply_binding(BINDING_HTTP_POST, str(resp), msg.assertion_consumer_service_url, "bench",
                                    response=True)
        assert "SignatureValue" in str(resp) and "SAMLResponse" in http["data"]

    one()  # warm-up (imports, metadata, xmlsec1 page cache)
    start.wait()
    lat = []
    cpu0 = _cpu_with_children()
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        t = time.perf_counter()
        one()
        lat.append(time.perf_counter() - t)
    out.put((lat, _cpu_with_children() - cpu0))


def _cpu_with_children() -> float:
    """CPU seconds of this process and its finished children (pysaml2 runs xmlsec1 once per signature)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def run_peer(setup: dict, seconds: float, concurrency: int) -> tuple[list[float], float, float]:
    ctx = mp.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=peer_worker, args=(setup, seconds, start, out)) for _ in range(concurrency)]
    for p in procs:
        p.start()
    time.sleep(0.5)
    t0 = time.perf_counter()
    start.set()
    lat: list[float] = []
    cpu = 0.0
    for _ in procs:
        got, spent = out.get(timeout=seconds + 60)
        lat.extend(got)
        cpu += spent
    wall = time.perf_counter() - t0
    for p in procs:
        p.join()
    return lat, wall, cpu


def report(name: str, lat: list[float], wall: float) -> float:
    rate = len(lat) / wall
    print(f"{name:<34} {len(lat):>7} in {wall:5.1f} s  {rate:8.1f}/s   latency ms: mean "
          f"{statistics.mean(lat) * 1000:7.2f}  p50 {pct(lat, 50) * 1000:7.2f}  p95 {pct(lat, 95) * 1000:7.2f}"
          f"  p99 {pct(lat, 99) * 1000:7.2f}")
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--peer-seconds", type=float, default=10)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--redis", action="store_true", help="IDHUB_REDIS_URL on the test Redis (db 13)")
    ap.add_argument("--py-spy", metavar="FILE", help="profile idhub's workers with py-spy during the measured "
                    "run (collapsed stacks in FILE; the sampling slows idhub: figures are then not comparable)")
    args = ap.parse_args()

    db_url = redis_url = None
    if args.db == "postgres":
        from tests.services import postgres_url

        db_url = postgres_url()
    if args.redis:
        import redis

        redis_url = "redis://127.0.0.1:6379/13"
        redis.Redis.from_url(redis_url).flushdb()
    print(f"SAML SSO: signed Responses per second, concurrency {args.concurrency}, db={args.db}, "
          f"redis={'yes' if redis_url else 'no'}, load {loadavg()}")
    with tempfile.TemporaryDirectory(prefix="saml-bench-") as tmp:
        setup = peer_setup(Path(tmp))
        hub = LiveHub(config(), workers=args.concurrency, database_url=db_url, redis_url=redis_url)
        browsers: list[LeanBrowser] = []
        try:
            hub.start()
            cookies = _sign_in(hub)
            browsers = spread_clients(hub, cookies, args.concurrency)
            drive_hub(hub, browsers, 1.5)  # warm-up: key cache, connections, templates
            spy = None
            if args.py_spy:
                spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--gil", "--pid",
                                        str(hub.proc.pid), "--subprocesses", "--nonblocking", "--format", "raw",
                                        "--rate", "250", "--duration", str(int(args.seconds)), "-o", args.py_spy],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            before = tree_cpu(hub.proc.pid)
            hub_lat, hub_wall = drive_hub(hub, browsers, args.seconds)
            after = tree_cpu(hub.proc.pid)
            hub_cpu = cpu_delta(before, after)
            split = sorted((after[p] - before.get(p, 0.0) for p in after if p != hub.proc.pid), reverse=True)
            if spy is not None:
                spy.wait()
        finally:
            for b in browsers:
                b.close()
            hub.cleanup()
            if db_url:
                from tests.services import drop_postgres

                drop_postgres(db_url)
        peer_lat, peer_wall, peer_cpu = run_peer(setup, args.peer_seconds, args.concurrency)
    ours = report("idhub GET /saml/sso (HTTP)", hub_lat, hub_wall)
    theirs = report("pysaml2 Server (in process)", peer_lat, peer_wall)
    ours_cpu, theirs_cpu = hub_cpu / len(hub_lat), peer_cpu / len(peer_lat)
    print(f"CPU per response: idhub server {ours_cpu * 1000:.2f} ms (gunicorn arbiter + workers), "
          f"pysaml2 {theirs_cpu * 1000:.2f} ms (with its xmlsec1 runs)")
    uneven = len(split) > 1 and split[-1] < 0.5 * split[0]
    print("CPU per worker: " + ", ".join(f"{c:.2f} s" for c in split)
          + ("  (uneven: the client connections landed on fewer workers than there are)" if uneven else ""))
    print(f"ratio idhub ÷ pysaml2: wall {ours / theirs:.1f}x, CPU {theirs_cpu / ours_cpu:.1f}x  (goal ≥ 10x)   "
          f"load after: {loadavg()}")


def _sign_in(hub: LiveHub) -> dict:
    """The real sign-in pages once (as bench/signin.py drives them); the session's cookies for the SSO clients."""
    b = LeanBrowser(hub.base_url)
    _, _, page = b.get("/w/bench/login")
    status, loc, _ = b.post("/w/bench/login", {"email": "user0@bench.test", "csrf_token": CSRF.search(page).group(1)})
    assert status in (302, 303), status
    _, _, page = b.get(urlsplit(loc)._replace(scheme="", netloc="").geturl())
    status, _loc, text = b.post("/w/bench/login/password", {"flow": FLOW.search(page).group(1),
                                                            "password": PASSWORD,
                                                            "csrf_token": CSRF.search(page).group(1)})
    assert status == 302 and "idhub_session_bench" in b.cookies, (status, text[:300])
    b.close()
    return dict(b.cookies)


if __name__ == "__main__":
    main()
