"""SCIM at 100,000 users: idhub (PostgreSQL and SQLite) against the scim2-server reference server (issue 7).

    .venv/bin/python bench/scim.py [--users 100000] [--lookups 500] [--pages 200] [--creates 300] [--no-sqlite]

Everything runs on this machine in one run, one after the other, over HTTP with one keep-alive client:
- idhub: a real ``idhub serve`` (tests.helpers.live.LiveHub, 2 workers) on a fresh PostgreSQL database
  (tests.services.postgres_url) and on SQLite. The users are bulk-inserted through SQLAlchemy core in the shape
  ``ScimService`` writes: a ``users`` row (``scim`` JSON holding emails and title) and its ``scim_values`` rows;
  then ``VACUUM ANALYZE``. The bearer token is the config's ``scim_tokens`` entry.
- scim2-server (PyPI): ``scim2-server --hostname 127.0.0.1 --port P --bearer-token T`` (in-memory), loaded with
  the same users through its own ``/v2/Bulk`` endpoint, 1,000 POST operations per request.
Measured: ``filter=userName eq "…"`` latency (random existing users, p50/p99), list pages per second
(``startIndex`` random in the whole set, ``count=100``) and creates per second (POST /Users). Prints the ratios
(idhub ÷ peer for rates, peer ÷ idhub for latencies: above 1 means idhub is better), the load average, and
PostgreSQL's EXPLAIN ANALYZE of the filter, the page and the count queries as the service issues them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path

# This file is named like the ``scim`` package: keep bench/ off the path so that ``import scim`` is the package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))
import requests  # noqa: E402
from sqlalchemy import create_engine, insert, select, text  # noqa: E402

from bench._common import REPO, loadavg, pct  # noqa: E402

TOKEN = "bench-scim-token-0123456789abcdefghijklmnopqrstuv"
WS = "bench"
USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
BULK_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:BulkRequest"


def config() -> dict:
    return {"workspaces": [{"slug": WS, "name": "Bench", "plan": "enterprise",
                            "scim_tokens": [{"name": "bench", "token": TOKEN}]}]}


def user_doc(i: int) -> dict:
    return {"schemas": [USER_SCHEMA], "userName": f"user{i:06d}@bench.test", "externalId": f"ext-{i}",
            "name": {"givenName": f"Given{i}", "familyName": f"Family{i}"}, "displayName": f"User {i}",
            "active": True, "title": "Engineer" if i % 3 else "Manager",
            "emails": [{"value": f"user{i:06d}@bench.test", "type": "work", "primary": True}]}


# ---- loading idhub's database -------------------------------------------------------------------------------
def load_idhub(url: str, n: int) -> float:
    """Bulk-insert ``n`` users in ScimService's shape; returns seconds."""
    from idp.models import User, Workspace
    from scim.models import ScimValue
    from scim.service import fold

    t0 = time.perf_counter()
    engine = create_engine(url)
    with engine.begin() as conn:
        ws_id = conn.scalar(select(Workspace.id).where(Workspace.slug == WS))
        now = datetime.now(UTC)
        chunk = 5000
        for start in range(0, n, chunk):
            users, values = [], []
            for i in range(start, min(n, start + chunk)):
                d = user_doc(i)
                uid = str(uuid.uuid4())
                scim = {"emails": d["emails"], "title": d["title"]}
                users.append({"id": uid, "workspace_id": ws_id, "email": d["userName"],
                              "email_normalized": d["userName"], "name": d["displayName"], "role": "member",
                              "active": True, "password_reset_required": False, "created_at": now,
                              "updated_at": now, "external_id": d["externalId"], "given_name": f"Given{i}",
                              "family_name": f"Family{i}", "display_name": d["displayName"], "scim": scim})
                for sub, v in (("value", d["emails"][0]["value"]), ("type", "work"), ("primary", "true")):
                    values.append({"owner_id": uid, "attr": "emails", "idx": 0, "sub": sub, "value": v,
                                   "folded": fold(v)})
                values.append({"owner_id": uid, "attr": "title", "idx": 0, "sub": "", "value": d["title"],
                               "folded": fold(d["title"])})
            conn.execute(insert(User), users)
            conn.execute(insert(ScimValue), values)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        # what autovacuum does to a settled table (statistics, and the visibility map for index-only scans)
        conn.execute(text("ANALYZE" if url.startswith("sqlite") else "VACUUM ANALYZE"))
    engine.dispose()
    return time.perf_counter() - t0


def explain(url: str, n: int) -> list[tuple[str, str]]:
    """EXPLAIN ANALYZE of the statements ScimService.list issues (compiled from its own translator)."""
    from sqlalchemy import func

    from idp.models import User, Workspace
    from scim.filters import parse_filter
    from scim.schemas import USER
    from scim.service import Caller, ScimService

    engine = create_engine(url)
    out = []
    with engine.connect() as conn:
        ws_id = conn.scalar(select(Workspace.id).where(Workspace.slug == WS))
        tr = ScimService(None)._translator(USER, Caller(ws_id, WS, "bench", False))
        cond = [User.workspace_id == ws_id, tr.condition(parse_filter(f'userName eq "user{n // 2:06d}@bench.test"'))]
        base = [User.workspace_id == ws_id]
        stmts = {
            "filter userName eq": select(User).where(*cond).order_by(User.id).offset(0).limit(100),
            "filter count": select(func.count()).select_from(User).where(*cond),
            "page startIndex=n/2": select(User).where(User.id.in_(
                select(User.id).where(*base).order_by(User.id).offset(n // 2).limit(100))).order_by(User.id),
            "page count": select(func.count()).select_from(User).where(*base),
        }
        for label, stmt in stmts.items():
            sql = stmt.compile(engine, compile_kwargs={"literal_binds": True})
            plan = conn.execute(text(f"EXPLAIN ANALYZE {sql}")).scalars().all()
            out.append((label, "\n".join(plan)))
    engine.dispose()
    return out


# ---- the measurements --------------------------------------------------------------------------------------
def measure(base: str, n: int, lookups: int, pages: int, creates: int, tag: str) -> dict:
    s = requests.Session()
    s.headers.update({"Authorization": f"Bearer {TOKEN}", "Accept": "application/scim+json",
                      "Content-Type": "application/scim+json"})
    rnd = random.Random(7)
    for _ in range(20):  # warm-up: connections, caches, imports
        s.get(f"{base}/Users", params={"filter": f'userName eq "user{rnd.randrange(n):06d}@bench.test"'})
    lat = []
    for _ in range(lookups):
        i = rnd.randrange(n)
        t0 = time.perf_counter()
        r = s.get(f"{base}/Users", params={"filter": f'userName eq "user{i:06d}@bench.test"'})
        lat.append(time.perf_counter() - t0)
        body = r.json()
        assert r.status_code == 200 and body["totalResults"] == 1, (tag, r.status_code, r.text[:300])
    t0 = time.perf_counter()
    for _ in range(pages):
        start = rnd.randrange(1, n - 100)
        r = s.get(f"{base}/Users", params={"startIndex": start, "count": 100})
        assert r.status_code == 200 and len(r.json()["Resources"]) == 100, (tag, r.status_code, r.text[:300])
    page_rate = pages / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for k in range(creates):
        d = user_doc(n + k)
        d["userName"] = d["emails"][0]["value"] = f"new{k:05d}-{tag}@bench.test"
        r = s.post(f"{base}/Users", data=json.dumps(d))
        assert r.status_code == 201, (tag, r.status_code, r.text[:300])
    create_rate = creates / (time.perf_counter() - t0)
    s.close()
    return {"p50": pct(lat, 50) * 1000, "p99": pct(lat, 99) * 1000, "pages": page_rate, "creates": create_rate,
            "load": loadavg()}


def run_idhub(url: str, n: int, args, label: str) -> dict:
    from tests.helpers.live import LiveHub

    hub = LiveHub(config(), database_url=url, workers=args.workers)
    try:
        hub.run("db", "upgrade")
        hub.apply(config())
        secs = load_idhub(url, n)
        print(f"  {label}: {n} users bulk-inserted (users + scim_values, ANALYZE) in {secs:.1f} s", flush=True)
        hub._serve()
        res = measure(hub.url(f"/w/{WS}/scim/v2"), n, args.lookups, args.pages, args.creates, label)
        res["load_s"] = secs
        return res
    finally:
        hub.cleanup()


def run_peer(n: int, args) -> dict:
    from tests.helpers.smtp import free_port

    port = free_port()
    exe = str(Path(sys.executable).parent / "scim2-server")
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([exe, "--hostname", "127.0.0.1", "--port", str(port), "--bearer-token", TOKEN],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}/v2"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                req = urllib.request.Request(f"{base}/ServiceProviderConfig",
                                             headers={"Authorization": f"Bearer {TOKEN}"})
                with urllib.request.urlopen(req, timeout=2):  # noqa: S310
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    log.seek(0)
                    raise RuntimeError("scim2-server did not start:\n" + log.read().decode(errors="replace"))
                time.sleep(0.2)
        t0 = time.perf_counter()
        s = requests.Session()
        s.headers.update({"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/scim+json"})
        for start in range(0, n, 1000):
            ops = [{"method": "POST", "path": "/Users", "bulkId": f"u{i}", "data": user_doc(i)}
                   for i in range(start, min(n, start + 1000))]
            r = s.post(f"{base}/Bulk", data=json.dumps({"schemas": [BULK_SCHEMA], "Operations": ops}))
            assert r.status_code == 200, r.text[:500]
            bad = [o for o in r.json()["Operations"] if not str(o.get("status", "")).startswith("201")]
            assert not bad, bad[:3]
        secs = time.perf_counter() - t0
        s.close()
        print(f"  scim2-server: {n} users loaded through /v2/Bulk (1000 ops per request) in {secs:.1f} s", flush=True)
        res = measure(base, n, args.lookups, args.pages, args.creates, "peer")
        res["load_s"] = secs
        return res
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(10)
        log.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--lookups", type=int, default=500)
    ap.add_argument("--pages", type=int, default=200)
    ap.add_argument("--creates", type=int, default=300)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-sqlite", action="store_true")
    ap.add_argument("--no-explain", action="store_true")
    args = ap.parse_args()
    os.chdir(REPO)
    from tests.services import drop_postgres, postgres_url

    n = args.users
    print(f"SCIM benchmark: {n} users, {args.lookups} lookups, {args.pages} pages, {args.creates} creates; "
          f"load {loadavg()}, {os.cpu_count()} CPUs", flush=True)
    results = {}
    pg = postgres_url()
    try:
        results["idhub/PostgreSQL"] = run_idhub(pg, n, args, "pg")
        if not args.no_explain:
            for label, plan in explain(pg, n):
                print(f"\n-- EXPLAIN ANALYZE: {label}\n{plan}")
    finally:
        drop_postgres(pg)
    if not args.no_sqlite:
        with tempfile.TemporaryDirectory(prefix="idhub-bench-") as d:
            results["idhub/SQLite"] = run_idhub(f"sqlite:///{d}/bench.db", n, args, "sqlite")
    results["scim2-server"] = run_peer(n, args)
    peer = results["scim2-server"]
    print(f"\n{'server':18} {'lookup p50':>11} {'lookup p99':>11} {'pages/s':>9} {'creates/s':>10}  load (1/5/15)")
    for name, r in results.items():
        print(f"{name:18} {r['p50']:9.2f}ms {r['p99']:9.2f}ms {r['pages']:9.1f} {r['creates']:10.1f}  {r['load']}")
    print("\nratios in idhub's favour (peer latency ÷ idhub latency; idhub rate ÷ peer rate); goal ≥ 3, p99 < 10 ms")
    ok = True
    for name, r in results.items():
        if name == "scim2-server":
            continue
        ratios = {"p50": peer["p50"] / r["p50"], "p99": peer["p99"] / r["p99"],
                  "pages": r["pages"] / peer["pages"], "creates": r["creates"] / peer["creates"]}
        met = all(v >= 3 for v in ratios.values()) and r["p99"] < 10
        ok &= met
        print(f"{name:18} " + "  ".join(f"{k} {v:6.2f}x" for k, v in ratios.items())
              + f"  {'goal met' if met else 'GOAL NOT MET'}")
    print(f"load average at the end: {loadavg()}")
    print("all goals met" if ok else "some goals not met (see above)")


if __name__ == "__main__":
    main()
