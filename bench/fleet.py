"""One `idhub serve` node against two on the same PostgreSQL and Redis: sign-ins and session page hits.

    .venv/bin/python bench/fleet.py [--seconds 8] [--concurrency 8] [--hits 5] [--users 40]

Both layouts run the same number of gunicorn worker processes (one node with 2 workers, or two nodes with 1 worker
each, 4 threads per worker), on one fresh PostgreSQL database and Redis db 12 (flushed), one after the other in this
run on this machine. ``concurrency`` client threads each loop: sign in (login page, email, password: an argon2id
verify) and then ``hits`` requests to the security page with that session. With two nodes every request goes to
the next node in turn (a proxy without sticky sessions), so a session made on one node is read on the other.

Printed per layout: sign-ins/s, page hits/s, p50/p99 latency of each, and PostgreSQL lock waits sampled every
20 ms during the load (``SELECT count(*) FROM pg_locks WHERE NOT granted``): the share of samples with any waiter
and the most waiters seen. Two nodes on one box share its CPUs, so the ratio says what a fleet costs in
coordination (shared sessions, the audit chain, throttles), not what a second machine adds.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import re
import sys
import threading
import time
from pathlib import Path

import psycopg
import redis
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import loadavg, pct  # noqa: E402

from tests.helpers.live import LiveHub, random_secret  # noqa: E402
from tests.services import drop_postgres, postgres_url  # noqa: E402

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
FLOW = re.compile(r'name="flow" value="([^"]+)"')
PASSWORD = "S3cure-Example!"
REDIS_URL = "redis://127.0.0.1:6379/12"


def config(users: int) -> dict:
    return {"workspaces": [{"slug": "fleet", "name": "Fleet", "users": [
        {"email": f"user{i}@fleet.test", "password": PASSWORD} for i in range(users)]}]}


class LockSampler(threading.Thread):
    def __init__(self, dsn: str, interval: float = 0.02):
        super().__init__(daemon=True)
        self.dsn, self.interval = dsn, interval
        self.samples: list[int] = []
        self.what: collections.Counter = collections.Counter()  # (lock type, relation or "-", mode) of each waiter
        self.stop_at = threading.Event()

    def run(self):
        with psycopg.connect(self.dsn, autocommit=True) as c:
            while not self.stop_at.is_set():
                self.samples.append(c.execute("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone()[0])
                if self.samples[-1]:
                    for row in c.execute("SELECT locktype, coalesce(relation::regclass::text, '-'), mode "
                                         "FROM pg_locks WHERE NOT granted"):
                        self.what[tuple(row)] += 1
                time.sleep(self.interval)


def drive(bases: list[str], concurrency: int, hits: int, users: int, seconds: float, warmup: float) -> dict:
    signin_lat: list[float] = []
    page_lat: list[float] = []
    errors: list[str] = []
    counts = {"signins": 0, "pages": 0}
    lock = threading.Lock()
    start = time.monotonic()
    measure_from, end = start + warmup, start + warmup + seconds

    def worker(k: int):
        nodes = itertools.cycle(bases[k % len(bases):] + bases[:k % len(bases)])
        n = k
        while time.monotonic() < end:
            s = requests.Session()
            s.headers["User-Agent"] = f"Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0 bench-{k}"
            email = f"user{n % users}@fleet.test"
            n += concurrency
            t0 = time.monotonic()
            try:
                r = s.get(next(nodes) + "/w/fleet/login")
                r = s.post(next(nodes) + "/w/fleet/login", data={"email": email, "csrf_token": CSRF.search(r.text)[1]})
                r = s.post(next(nodes) + "/w/fleet/login/password", allow_redirects=False, data={
                    "flow": FLOW.search(r.text)[1], "password": PASSWORD, "csrf_token": CSRF.search(r.text)[1]})
                if r.status_code != 302:
                    raise RuntimeError(f"sign-in answered {r.status_code}")
            except Exception as exc:  # reported, and the run is invalid
                errors.append(f"sign-in: {exc}")
                return
            t1 = time.monotonic()
            if t0 >= measure_from and t1 <= end:
                with lock:
                    signin_lat.append(t1 - t0)
                    counts["signins"] += 1
            for _ in range(hits):
                t0 = time.monotonic()
                try:
                    r = s.get(next(nodes) + "/w/fleet/settings/security", allow_redirects=False)
                    if r.status_code != 200:
                        raise RuntimeError(f"answered {r.status_code}")
                except Exception as exc:  # reported, and the run is invalid
                    errors.append(f"page: {exc}")
                    return
                t1 = time.monotonic()
                if t0 >= measure_from and t1 <= end:
                    with lock:
                        page_lat.append(t1 - t0)
                        counts["pages"] += 1

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"bench failed: {errors[:3]}")
    if not signin_lat or not page_lat:
        raise SystemExit(f"bench failed: nothing finished inside the {seconds:g} s window (machine too loaded?)")
    return {"signins": counts["signins"] / seconds, "pages": counts["pages"] / seconds,
            "signin_p50": pct(signin_lat, 50), "signin_p99": pct(signin_lat, 99),
            "page_p50": pct(page_lat, 50), "page_p99": pct(page_lat, 99)}


def run(layout: str, nodes: int, workers: int, db: str, args) -> dict:
    redis.Redis.from_url(REDIS_URL).flushdb()
    secret = random_secret(48)
    hubs = [LiveHub(config(args.users) if i == 0 else None, database_url=db, redis_url=REDIS_URL, workers=workers,
                    extra_env={"IDHUB_SECRET_KEY": secret, "IDHUB_MAINTENANCE_INTERVAL": "0",
                               "IDHUB_LOG_LEVEL": "WARNING"})
            for i in range(nodes)]
    try:
        for h in hubs:
            h.start()
        sampler = LockSampler(db.replace("postgresql+psycopg://", "postgresql://"))
        sampler.start()
        out = drive([h.base_url for h in hubs], args.concurrency, args.hits, args.users, args.seconds, args.warmup)
        sampler.stop_at.set()
        sampler.join()
        waits = sampler.samples
        out.update(layout=layout, lock_share=sum(1 for w in waits if w) / max(len(waits), 1),
                   lock_max=max(waits, default=0), samples=len(waits), lock_what=sampler.what.most_common(3))
        return out
    finally:
        for h in hubs:
            h.cleanup()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--warmup", type=float, default=1)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--hits", type=int, default=5, help="security-page requests per sign-in")
    ap.add_argument("--users", type=int, default=40)
    args = ap.parse_args()
    print(f"fleet: {args.concurrency} clients, {args.hits} page hits per sign-in, {args.seconds:g} s each, "
          f"PostgreSQL + Redis, load {loadavg()}")
    rows = []
    for layout, nodes, workers in (("1 node x 2 workers", 1, 2), ("2 nodes x 1 worker", 2, 1)):
        db = postgres_url()
        try:
            rows.append(run(layout, nodes, workers, db, args))
        finally:
            drop_postgres(db)
    print("| layout | sign-ins/s | p50 / p99 ms | page hits/s | p50 / p99 ms | lock-wait samples | most waiters |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['layout']} | {r['signins']:.1f} | {r['signin_p50'] * 1000:.0f} / {r['signin_p99'] * 1000:.0f} | "
              f"{r['pages']:.1f} | {r['page_p50'] * 1000:.1f} / {r['page_p99'] * 1000:.1f} | "
              f"{r['lock_share'] * 100:.1f} % of {r['samples']} | {r['lock_max']} |")
    for r in rows:
        if r["lock_what"]:
            print(f"  {r['layout']}: waiters seen on " + ", ".join(f"{t} {rel} {mode} ({n})"
                                                                for (t, rel, mode), n in r["lock_what"]))
    one, two = rows
    print(f"two nodes / one node: sign-ins {two['signins'] / one['signins']:.2f}x, "
          f"page hits {two['pages'] / one['pages']:.2f}x (load {loadavg()})")


if __name__ == "__main__":
    main()
