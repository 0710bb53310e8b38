"""The floor under every idhub request on this machine: what the stack itself costs before idhub does anything.

    .venv/bin/python bench/floor.py [--requests 3000] [--threads 4]

Measures, in one run, with the same client as the other benchmarks (one keep-alive ``http.client`` connection):
- a bare Flask application (one route returning "ok") under gunicorn with ``idhub serve``'s worker settings
  (``gthread``, 1 worker here, ``--threads``): server CPU per request from ``/proc`` (utime + stime);
- idhub's own cheapest routes on a real ``idhub serve`` (``/healthz`` and the sign-in page) the same way;
- an RS256 and an RSA-3072 signature with ``cryptography`` (what an OIDC token and a SAML assertion cost to sign,
  before any XML canonicalisation or JSON);
- one durable, hash-chained audit append (``AuditLog.record``) on SQLite, idhub's cheapest durable write.

These are the parts a request cannot go below; bench/README.md compares them with the peers' whole requests.
"""

from __future__ import annotations

import argparse
import http.client
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, cpu_delta, loadavg, tree_cpu

from tests.helpers.live import LiveHub
from tests.helpers.smtp import free_port

APP = '''from flask import Flask
app = Flask(__name__)


@app.get("/x")
def x():
    return "ok"
'''


def per_request(port: int, pid: int, path: str, n: int) -> tuple[float, float]:
    """(server CPU ms, wall ms) per GET ``path`` over one keep-alive connection, after a warm-up."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for _ in range(300):
        c.request("GET", path)
        c.getresponse().read()
    before, t = tree_cpu(pid), time.perf_counter()
    for _ in range(n):
        c.request("GET", path)
        r = c.getresponse()
        r.read()
        assert r.status == 200, (path, r.status)
    wall, after = time.perf_counter() - t, tree_cpu(pid)
    c.close()
    return cpu_delta(before, after) / n * 1000, wall / n * 1000


def bare_flask(n: int, threads: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as d:
        Path(d, "bare.py").write_text(APP)
        port = free_port()
        gunicorn = str(Path(sys.executable).parent / "gunicorn")
        proc = subprocess.Popen([gunicorn, "-k", "gthread", "-w", "1", "--threads", str(threads), "-b",
                                 f"127.0.0.1:{port}", "bare:app"], cwd=d, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            for _ in range(100):
                try:
                    http.client.HTTPConnection("127.0.0.1", port, timeout=1).request("GET", "/x")
                    break
                except OSError:
                    time.sleep(0.1)
            return per_request(port, proc.pid, "/x", n)
        finally:
            proc.terminate()
            proc.wait(10)


def idhub_routes(n: int) -> dict[str, tuple[float, float]]:
    cfg = {"workspaces": [{"slug": "bench", "name": "Bench", "plan": "enterprise"}]}
    with LiveHub(cfg, workers=1) as hub:
        return {path: per_request(hub.port, hub.proc.pid, path, n) for path in ("/healthz", "/w/bench/login")}


def signatures(n: int = 500) -> dict[str, float]:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    out = {}
    for bits in (2048, 3072):
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        msg = b"x" * 400
        for _ in range(20):
            key.sign(msg, padding.PKCS1v15(), hashes.SHA256())
        t = time.process_time()
        for _ in range(n):
            key.sign(msg, padding.PKCS1v15(), hashes.SHA256())
        out[f"RSA-{bits} SHA-256 signature"] = (time.process_time() - t) / n * 1000
    return out


def audit_append(n: int = 500) -> float:
    from config.settings import Settings
    from idp import schema
    from idp.app import build_hub

    with tempfile.TemporaryDirectory() as d:
        url = f"sqlite:///{d}/floor.db"
        schema.upgrade(url)
        hub = build_hub(Settings(database_url=url, secret_key="f" * 48, outbox_dir=d, log_level="WARNING"))
        for i in range(50):
            hub.audit.record("bench.floor", data={"i": i})
        t = time.process_time()
        for i in range(n):
            hub.audit.record("bench.floor", data={"i": i})
        return (time.process_time() - t) / n * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--threads", type=int, default=4)
    a = ap.parse_args()
    print(f"floor benchmark  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  load {loadavg()} (start)")
    cpu, wall = bare_flask(a.requests, a.threads)
    print(f"  bare Flask on gunicorn gthread    {cpu:6.3f} ms server CPU per request   (wall {wall:.3f} ms)")
    for path, (cpu, wall) in idhub_routes(a.requests).items():
        print(f"  idhub GET {path:<24}{cpu:6.3f} ms server CPU per request   (wall {wall:.3f} ms)")
    for name, ms in signatures().items():
        print(f"  {name:<34}{ms:6.3f} ms CPU")
    print(f"  {'audit append (SQLite, durable)':<34}{audit_append():6.3f} ms CPU")
    print(f"  load at end {loadavg()}   (repo {REPO})")


if __name__ == "__main__":
    main()
