"""End-to-end password sign-ins against the raw argon2id verify, same machine, same run, same concurrency.

    .venv/bin/python bench/signin.py [--seconds 20] [--concurrency 2] [--db sqlite|postgres] [--redis]
                                     [--client http|requests] [--users 20]
                                     [--flow one-page|identifier-first]

Starts a real ``idhub serve`` (gunicorn, the production server; ``--workers`` = concurrency) and drives the flow
a browser runs — GET the sign-in page, POST the email and password (302 + a new session cookie); with
``--flow identifier-first`` POST the email, GET the password page it redirects to, POST the password — from
``concurrency`` client threads, every sign-in making a real
session, audit event and policy decision. The peer is ``idp.passwords.Hasher().verify`` (argon2id, m=19 MiB,
t=2, p=1) in ``concurrency`` processes, warmed up and timed only around the verify loop, run half before and
half after the hub (so a load change during the run shows as a spread instead of a bias).

Two ratios (target: a sign-in costs at most 15 % more than the hash alone):
- wall: verifies/s ÷ sign-ins/s. The client runs on the same 2 cores, so its own CPU is charged to idhub here.
- CPU:  server CPU per sign-in (gunicorn arbiter + workers from /proc, plus the PostgreSQL backends of the
  hub's database with --db postgres) ÷ argon2 CPU per verify. The client is a test artifact; this is the ratio
  the target is about.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import statistics
import threading
import time
from datetime import UTC, datetime
from http.cookies import SimpleCookie
from urllib.parse import urlencode, urlsplit

from _common import PASSWORD, argon2_peer, children, cpu_delta, loadavg, pct, proc_cpu, self_cpu, tree_cpu

from tests.helpers.live import LiveHub

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
FLOW = re.compile(r'name="flow" value="([^"]+)"')
UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def config(n_users: int) -> dict:
    return {"workspaces": [{"slug": "bench", "name": "Bench", "plan": "enterprise",
                            "users": [{"email": f"user{i}@bench.test", "password": PASSWORD}
                                      for i in range(n_users)]}]}


class LeanBrowser:
    """A cookie-keeping HTTP/1.1 client on one keep-alive connection: a fraction of ``requests``' CPU."""

    def __init__(self, base: str):
        u = urlsplit(base)
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        self.cookies: dict[str, str] = {}

    def _do(self, method: str, path: str, body: dict | None = None) -> tuple[int, str, str]:
        headers = {"User-Agent": UA, "Host": self.conn.host}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        data = None
        if body is not None:
            data = urlencode(body)
            headers.update(FORM)
        self.conn.request(method, path, body=data, headers=headers)
        r = self.conn.getresponse()
        text = r.read().decode()
        for h in r.headers.get_all("Set-Cookie") or ():
            for name, morsel in SimpleCookie(h).items():
                if morsel["max-age"] == "0" or not morsel.value:
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value
        return r.status, r.headers.get("Location", ""), text

    def get(self, path: str):
        return self._do("GET", path)

    def post(self, path: str, body: dict):
        return self._do("POST", path, body)

    def close(self):
        self.conn.close()


def _timed(base: str, steps) -> float:
    """Seconds for ``steps(browser)`` on a fresh lean browser; it must end signed in."""
    b = LeanBrowser(base)
    t0 = time.perf_counter()
    status, text = steps(b)
    assert status == 302 and "idhub_session_bench" in b.cookies, (status, text[:300])
    dt = time.perf_counter() - t0
    b.close()
    return dt


def sign_in_lean(base: str, email: str) -> float:
    """The one-page sign-in a browser runs where no connection claims an email domain: GET the page, POST both."""
    def steps(b: LeanBrowser):
        _, _, page = b.get("/w/bench/login")
        assert 'name="password"' in page, "the sign-in page is not one page"
        status, _, text = b.post("/w/bench/login", {"email": email, "password": PASSWORD,
                                                    "csrf_token": CSRF.search(page).group(1)})
        return status, text

    return _timed(base, steps)


def sign_in_identifier_first(base: str, email: str) -> float:
    """The email alone, then the password page (what a federated workspace's local users go through)."""
    def steps(b: LeanBrowser):
        _, _, page = b.get("/w/bench/login")
        status, loc, _ = b.post("/w/bench/login", {"email": email, "csrf_token": CSRF.search(page).group(1)})
        assert status in (302, 303), status
        _, _, page = b.get(urlsplit(loc)._replace(scheme="", netloc="").geturl())
        status, _, text = b.post("/w/bench/login/password", {"flow": FLOW.search(page).group(1),
                                                             "password": PASSWORD,
                                                             "csrf_token": CSRF.search(page).group(1)})
        return status, text

    return _timed(base, steps)


def sign_in_requests(base: str, email: str) -> float:
    import requests

    s = requests.Session()
    s.headers["User-Agent"] = UA
    t0 = time.perf_counter()
    r = s.get(f"{base}/w/bench/login")
    r = s.post(f"{base}/w/bench/login", data={"email": email, "password": PASSWORD,
                                              "csrf_token": CSRF.search(r.text).group(1)}, allow_redirects=False)
    assert r.status_code == 302, (r.status_code, r.text[:300])
    dt = time.perf_counter() - t0
    s.close()
    return dt


def drive(sign_in, base: str, seconds: float, concurrency: int, n_users: int) -> tuple[list[float], float]:
    """Sign-in latencies and the wall time of the window (from the start to the last sign-in's end)."""
    lat: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    t0 = time.perf_counter()
    stop = t0 + seconds

    def worker(k: int):
        i = k
        try:
            while time.perf_counter() < stop:
                dt = sign_in(base, f"user{i % n_users}@bench.test")
                with lock:
                    lat.append(dt)
                i += concurrency
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return lat, time.perf_counter() - t0


def pg_backends(db_url: str) -> list[int]:
    """PIDs of the PostgreSQL backends connected to the hub's database (same machine)."""
    import psycopg

    from tests.services import PG_ADMIN

    name = urlsplit(db_url).path.lstrip("/")
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        return [r[0] for r in conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (name,))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20, help="timed sign-in window; the peer gets the same")
    ap.add_argument("--concurrency", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--redis", action="store_true", help="IDHUB_REDIS_URL on the test Redis (db 14)")
    ap.add_argument("--client", choices=["http", "requests"], default="http",
                    help="http: a lean http.client browser (default); requests: the requests library")
    ap.add_argument("--flow", choices=["one-page", "identifier-first"], default="one-page",
                    help="one-page: email and password in one POST, the sign-in page of a workspace whose "
                         "connections claim no email domain (default); identifier-first: the email, then the "
                         "password page (lean client only)")
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--warmup", type=float, default=3)
    ap.add_argument("--log-level", default="INFO", help="IDHUB_LOG_LEVEL of the hub (INFO, the default, logs "
                                                         "one JSON line per request, as in production)")
    args = ap.parse_args()
    sign_in = sign_in_lean if args.client == "http" else sign_in_requests
    if args.flow == "identifier-first":
        sign_in = sign_in_identifier_first
    n = args.concurrency

    db_url = None
    if args.db == "postgres":
        from tests.services import postgres_url

        db_url = postgres_url()
    redis_url = None
    if args.redis:
        import redis

        redis_url = "redis://127.0.0.1:6379/14"
        redis.Redis.from_url(redis_url).flushdb()
    print(f"idhub sign-in benchmark  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  {os.cpu_count()} CPUs  "
          f"load {loadavg()} (start)")
    print(f"  {n} concurrent clients ({args.client}, {args.flow}) vs {n} argon2 processes, "
          f"{args.seconds:.0f} s each side, "
          f"db={args.db}, redis={'yes' if redis_url else 'no'}, gunicorn {n} worker(s) x 4 threads, "
          f"log level {args.log_level}", flush=True)

    peer_a = argon2_peer(args.seconds / 2, n)
    try:
        with LiveHub(config(args.users), database_url=db_url, redis_url=redis_url, workers=n,
                     extra_env={"IDHUB_LOG_LEVEL": args.log_level}) as hub:
            drive(sign_in, hub.base_url, args.warmup, n, args.users)  # devices known, imports and caches warm
            master = hub.proc.pid
            pg0 = {p: proc_cpu(p) for p in pg_backends(db_url)} if db_url else {}
            srv0, cli0 = tree_cpu(master), self_cpu()
            lat, elapsed = drive(sign_in, hub.base_url, args.seconds, n, args.users)
            srv1, cli1 = tree_cpu(master), self_cpu()
            pg1 = {p: proc_cpu(p) for p in pg_backends(db_url)} if db_url else {}
            workers = len(children(master))
    finally:
        if db_url:
            from tests.services import drop_postgres

            drop_postgres(db_url)
    peer_b = argon2_peer(args.seconds / 2, n)

    count = len(lat)
    signin_rate = count / elapsed
    srv_cpu = (cpu_delta(srv0, srv1) + cpu_delta(pg0, pg1)) / count
    cli_cpu = (cli1 - cli0) / count
    verify_rate = (peer_a["rate"] + peer_b["rate"]) / 2
    argon_cpu = (peer_a["cpu_per_op"] * peer_a["count"] + peer_b["cpu_per_op"] * peer_b["count"]) / (
        peer_a["count"] + peer_b["count"])
    wall_ratio = verify_rate / signin_rate
    cpu_ratio = srv_cpu / argon_cpu
    ms = 1000
    print()
    print("  ---------------------------------------------------------------- summary")
    print(f"  idhub sign-ins/s        {signin_rate:8.1f}   p50 {statistics.median(lat) * ms:6.1f} ms   "
          f"p99 {pct(lat, 99) * ms:6.1f} ms   ({count} sign-ins, {workers} workers)")
    print(f"  argon2id verifies/s     {verify_rate:8.1f}   before {peer_a['rate']:.1f}, after {peer_b['rate']:.1f}"
          f"   one verify {argon_cpu * ms:.1f} ms CPU, {peer_a['wall_per_op'] * ms:.1f} ms wall under load")
    print(f"  CPU per sign-in         server {srv_cpu * ms:6.1f} ms"
          f"{' (incl. PostgreSQL backends)' if db_url else ''}   client {cli_cpu * ms:6.1f} ms   "
          f"(client = {cli_cpu / (srv_cpu + cli_cpu) * 100:.0f} % of the sign-in's CPU)")
    print(f"  wall ratio  verifies/s / sign-ins/s    {wall_ratio:6.3f}  -> {(wall_ratio - 1) * 100:+6.1f} % "
          f"(client CPU included)")
    print(f"  CPU ratio   server CPU / argon2 CPU    {cpu_ratio:6.3f}  -> {(cpu_ratio - 1) * 100:+6.1f} % "
          f"over the hash alone   target <= +15 %  {'OK' if cpu_ratio <= 1.15 else 'MISSED'}")
    print(f"  load at end {loadavg()}")


if __name__ == "__main__":
    main()
