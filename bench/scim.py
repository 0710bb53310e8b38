"""SCIM at 100,000 users: idhub (PostgreSQL and SQLite) against the scim2-server reference server (issue 7).

    .venv/bin/python bench/scim.py [--users 100000] [--lookups 500] [--pages 200] [--creates 2000]
                                   [--workers 2] [--threads 4] [--concurrency 4] [--no-sqlite] [--no-peer] [--no-floor]
                                   [--profile]

Everything runs on this machine in one run, one server after the other, both under gunicorn with the same
settings (gthread, ``--workers`` × ``--threads``), driven by the same client: ``--concurrency`` threads, each with
one persistent keep-alive ``http.client`` connection, after a warm-up.
- idhub: a real ``idhub serve`` (tests.helpers.live.LiveHub) on a fresh PostgreSQL database
  (tests.services.postgres_url) and on SQLite. The users are bulk-inserted through SQLAlchemy core in the shape
  ``ScimService`` writes (a ``users`` row and its ``scim_values`` rows); then ``VACUUM ANALYZE``.
- scim2-server (PyPI): its WSGI application as its ``scim2-server`` command builds it (in-memory storage, a static
  bearer token), under gunicorn with ``preload_app``: the master loads the users through the application's own
  creation path before forking (``--serve-peer``, a subprocess of this script).
- the floor of a durable create (``--no-floor`` skips it): a bare Flask application under the same gunicorn
  settings whose POST inserts the JSON body as one row into PostgreSQL with SQLAlchemy Core and commits
  (``serve_floor``), driven by the same client at the same concurrency as the creates; printed against
  scim2-server's create rate of the same run: the ratio no idhub create can reach on this stack.
Measured: ``filter=userName eq "…"`` latency (random existing users, p50/p99), list pages per second
(``startIndex`` random in the whole set, ``count=100``), creates per second (POST /Users), and the server's CPU
per request (gunicorn processes, plus PostgreSQL's backends for idhub/PostgreSQL). Prints the ratios (idhub ÷ peer
for rates, peer ÷ idhub for latencies: above 1 means idhub is better), the load average, and PostgreSQL's EXPLAIN
ANALYZE of the statements the service issues.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlencode, urlsplit

# This file is named like the ``scim`` package: keep bench/ off the path so that ``import scim`` is the package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))
from sqlalchemy import create_engine, insert, select, text  # noqa: E402

from bench._common import REPO, cpu_delta, loadavg, pct, proc_cpu, tree_cpu, wait_listening  # noqa: E402

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
    """EXPLAIN ANALYZE of the statements ScimService.list issues (built by its own translator and statement
    builder, with a cached caller's token re-check), for userName, externalId and emails filters and a deep page."""
    from sqlalchemy import func

    from idp.models import User, Workspace
    from scim.filters import parse_filter
    from scim.models import ScimToken
    from scim.schemas import USER
    from scim.service import Caller, ScimService

    engine = create_engine(url)
    out = []
    with engine.connect() as conn:
        ws_id = conn.scalar(select(Workspace.id).where(Workspace.slug == WS))
        token_id = conn.scalar(select(ScimToken.id).where(ScimToken.workspace_id == ws_id))
        caller = Caller(ws_id, WS, "bench", False, token_id, cached=True)
        tr = ScimService(None)._translator(USER, caller)
        base = [User.workspace_id == ws_id, ScimService._still_valid(caller)]
        order = [User.id]

        def lookup(flt: str):
            cond = [*base, tr.condition(parse_filter(flt))]
            return ScimService.user_statement(User.id.in_(select(User.id).where(*cond).order_by(*order).limit(100)),
                                              order)

        i = n // 2
        params = {"ws": ws_id, "tid": token_id, "slug": WS, "lim": 100}
        stmts = {
            "filter userName eq (the prebuilt lookup statement: the whole request's one query)":
                ScimService._lookup_statement("username").params(v=f"user{i:06d}@bench.test", **params),
            "filter externalId eq (prebuilt)": ScimService._lookup_statement("externalid").params(v=f"ext-{i}",
                                                                                                 **params),
            "filter userName co (the translator's statement)": lookup(f'userName co "user{i:06d}@"'),
            "filter emails.value eq": lookup(f'emails.value eq "user{i:06d}@bench.test"'),
            "page startIndex=n/2": ScimService.user_statement(User.id.in_(
                select(User.id).where(*base).order_by(*order).offset(n // 2).limit(100)), order),
            "page count (totalResults)": select(func.count()).select_from(User).where(*base),
        }
        for label, stmt in stmts.items():
            sql = stmt.compile(engine, compile_kwargs={"literal_binds": True})
            plan = conn.execute(text(f"EXPLAIN ANALYZE {sql}")).scalars().all()
            out.append((label, "\n".join(plan)))
    engine.dispose()
    return out


# ---- the client ---------------------------------------------------------------------------------------------
class Client:
    """One persistent keep-alive HTTP/1.1 connection (``http.client``), as a provisioning client keeps one."""

    def __init__(self, base: str):
        u = urlsplit(base)
        self.prefix = u.path
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        self.headers = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/scim+json",
                        "Content-Type": "application/scim+json"}

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        self.conn.request(method, self.prefix + path, body=body, headers=self.headers)
        resp = self.conn.getresponse()
        return resp.status, resp.read()

    def close(self) -> None:
        self.conn.close()


def _lookup_path(i: int) -> str:
    return "/Users?" + urlencode({"filter": f'userName eq "user{i:06d}@bench.test"'})


def _parallel(base: str, jobs: list, concurrency: int, check) -> tuple[list[float], float]:
    """Run ``jobs`` (method, path, body) over ``concurrency`` connections; per-request latencies and wall time."""
    lat: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    chunks = [jobs[k::concurrency] for k in range(concurrency)]
    clients = [Client(base) for _ in chunks]
    barrier = threading.Barrier(len(chunks) + 1)

    def work(client: Client, mine: list) -> None:
        local = []
        barrier.wait()
        try:
            for method, path, body in mine:
                t0 = time.perf_counter()
                status, raw = client.request(method, path, body)
                local.append(time.perf_counter() - t0)
                problem = check(status, raw)
                if problem:
                    errors.append(problem)
                    return
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(repr(exc))
        finally:
            with lock:
                lat.extend(local)

    threads = [threading.Thread(target=work, args=(c, m)) for c, m in zip(clients, chunks, strict=True)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    for c in clients:
        c.close()
    if errors:
        raise AssertionError(errors[:3])
    return lat, wall


def _db_backends(dbname: str | None) -> list[int]:
    """PostgreSQL backend processes serving ``dbname`` (their process title names the database)."""
    if not dbname:
        return []
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                cmd = Path(f"/proc/{d}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if cmd.startswith("postgres: ") and f" {dbname} " in cmd:
                out.append(int(d))
    return out


class CpuMeter:
    """CPU seconds of the server: the gunicorn arbiter, its workers and (PostgreSQL) the database's backends."""

    def __init__(self, pid: int, dbname: str | None = None):
        self.pid, self.dbname = pid, dbname

    def snapshot(self) -> dict[int, float]:
        snap = tree_cpu(self.pid)
        snap.update({p: proc_cpu(p) for p in _db_backends(self.dbname)})
        return snap


def measure(base: str, n: int, args, tag: str, meter: CpuMeter | None = None) -> dict:
    rnd = random.Random(7)
    conc = args.concurrency
    cpu: dict[str, float] = {}

    def timed(name: str, jobs: list, check) -> tuple[list[float], float]:
        before = meter.snapshot() if meter else {}
        out = _parallel(base, jobs, conc, check)
        if meter and jobs:
            cpu[name] = cpu_delta(before, meter.snapshot()) / len(jobs) * 1000
        return out

    def one_user(status, raw):
        if status != 200 or json.loads(raw)["totalResults"] != 1:
            return f"{tag}: lookup {status} {raw[:300]!r}"
        return None

    def full_page(status, raw):
        if status != 200 or len(json.loads(raw)["Resources"]) != 100:
            return f"{tag}: page {status} {raw[:300]!r}"
        return None

    def created(status, raw):
        return None if status == 201 else f"{tag}: create {status} {raw[:300]!r}"

    # warm-up: every connection, every worker, the code paths of all three measurements
    warm = [("GET", _lookup_path(rnd.randrange(n)), None) for _ in range(50 * conc)]
    warm += [("GET", f"/Users?startIndex={rnd.randrange(1, n - 100)}&count=100", None) for _ in range(2 * conc)]
    _parallel(base, warm, conc, lambda status, _raw: None if status == 200 else f"warm-up {status}")
    lookups = [("GET", _lookup_path(rnd.randrange(n)), None) for _ in range(args.lookups)]
    lat, _ = timed("lookup", lookups, one_user)
    pages = [("GET", f"/Users?startIndex={rnd.randrange(1, n - 100)}&count=100", None) for _ in range(args.pages)]
    _, wall = timed("page", pages, full_page)
    page_rate = args.pages / wall
    docs = []
    for k in range(args.creates):
        d = user_doc(n + k)
        d["userName"] = d["emails"][0]["value"] = f"new{k:05d}-{tag}@bench.test"
        docs.append(("POST", "/Users", json.dumps(d).encode()))
    _, wall = timed("create", docs, created)
    create_rate = args.creates / wall
    return {"p50": pct(lat, 50) * 1000, "p99": pct(lat, 99) * 1000, "pages": page_rate, "creates": create_rate,
            "load": loadavg(), "cpu": cpu}


def run_idhub(url: str, n: int, args, label: str) -> dict:
    from tests.helpers.live import LiveHub

    hub = LiveHub(config(), database_url=url, workers=args.workers)
    try:
        hub.run("db", "upgrade")
        hub.apply(config())
        secs = load_idhub(url, n)
        print(f"  {label}: {n} users bulk-inserted (users + scim_values, ANALYZE) in {secs:.1f} s", flush=True)
        hub._serve()
        if args.profile:
            _profile(hub.proc.pid, label)
        dbname = None if url.startswith("sqlite") else urlsplit(url).path.lstrip("/")
        res = measure(hub.url(f"/w/{WS}/scim/v2"), n, args, label, CpuMeter(hub.proc.pid, dbname))
        res["load_s"] = secs
        return res
    finally:
        _stop_profile()
        hub.cleanup()


_PROFILERS: list[subprocess.Popen] = []


def _profile(pid: int, label: str) -> None:
    """py-spy on every gunicorn worker of ``pid`` while the measurements run (collapsed stacks under /tmp). GIL
    samples only (``--gil``): the Python CPU, not the threads waiting on PostgreSQL or the network."""
    from bench._common import children

    time.sleep(1)
    for w in children(pid):
        out = f"/tmp/idhub-scim-{label}-{w}.txt"  # collapsed stacks (flamegraph.pl / speedscope input)
        _PROFILERS.append(subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(w),
                                            "-o", out, "-f", "raw", "-r", "200", "--nonblocking",
                                            "--gil"],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        print(f"  profiling worker {w} → {out}", flush=True)


def _stop_profile() -> None:
    while _PROFILERS:
        p = _PROFILERS.pop()
        p.send_signal(2)
        p.wait(30)


# ---- the peer ------------------------------------------------------------------------------------------------
def serve_peer(port: int, n: int, workers: int, threads: int) -> None:
    """scim2-server's own WSGI application (as its ``scim2-server`` command builds it: in-memory storage, the
    RFC 7643 schemas, a static bearer token) under gunicorn with idhub's worker settings (``gthread``,
    ``workers`` × ``threads``). ``preload_app``: the master loads the ``n`` users through the application's own
    creation path (``read_creation`` + ``storage.create``, what POST /Users does) before forking, so every worker
    holds all of them (copy-on-write)."""
    import secrets

    from gunicorn.app.base import BaseApplication
    from scim2_models import ScimProvider
    from scim2_server.memory import InMemoryStorage
    from scim2_server.service import ScimService as PeerService
    from scim2_server.testserver.application import BEARER_TOKEN_SCHEME, BearerTokenApplication
    from scim2_server.utils import (
        load_default_resource_types,
        load_default_schemas,
        load_default_service_provider_config,
    )

    cfg = load_default_service_provider_config()
    cfg.authentication_schemes = [*(cfg.authentication_schemes or []), BEARER_TOKEN_SCHEME]
    provider = ScimProvider.from_discovery(load_default_schemas().values(), load_default_resource_types().values(),
                                           config=cfg)
    service = PeerService(provider, secret=secrets.token_urlsafe(32))
    storage = InMemoryStorage()
    app = BearerTokenApplication(storage, provider, service=service, bearer_tokens=[TOKEN])
    t0 = time.perf_counter()
    with service.provider:
        rt = service.resource_type_at("/Users")
        for i in range(n):
            resource = service.read_creation(rt, json.dumps(user_doc(i)).encode(), "application/scim+json")
            with storage.operation():
                storage.create(rt, resource)
    print(f"peer loaded {n} users in {time.perf_counter() - t0:.1f} s", flush=True)

    class Server(BaseApplication):
        def load_config(self):
            for key, value in {"bind": f"127.0.0.1:{port}", "workers": workers, "threads": threads,
                               "worker_class": "gthread", "preload_app": True, "timeout": 60, "graceful_timeout": 5,
                               "accesslog": None,
                               "errorlog": "-", "loglevel": "warning",
                               "worker_tmp_dir": "/dev/shm" if os.path.isdir("/dev/shm") else None}.items():
                self.cfg.set(key, value)

        def load(self):
            return app

    Server().run()


def run_peer(n: int, args) -> dict:
    from tests.helpers.smtp import free_port

    port = free_port()
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve-peer", str(port),
                             "--users", str(n), "--workers", str(args.workers), "--threads", str(args.threads)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}/v2"
    t0 = time.perf_counter()
    try:
        deadline = time.monotonic() + 900
        while True:
            try:
                req = urllib.request.Request(f"{base}/ServiceProviderConfig",
                                             headers={"Authorization": f"Bearer {TOKEN}"})
                with urllib.request.urlopen(req, timeout=2):  # noqa: S310
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    log.seek(0)
                    raise RuntimeError("scim2-server did not start:\n" + log.read().decode(errors="replace")) \
                        from None
                time.sleep(0.5)
        secs = time.perf_counter() - t0
        print(f"  scim2-server: {n} users loaded in-process (its POST /Users path), {args.workers} gunicorn workers "
              f"× {args.threads} threads, ready in {secs:.1f} s", flush=True)
        if args.profile:
            _profile(proc.pid, "peer")
        res = measure(base, n, args, "peer", CpuMeter(proc.pid))
        res["load_s"] = secs
        return res
    finally:
        _stop_profile()
        os.killpg(proc.pid, 15)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(10)
        log.close()


# ---- the floor of a durable create ------------------------------------------------------------------------------
def serve_floor(port: int, url: str, workers: int, threads: int) -> None:
    """The least a durable create can cost on this stack: a bare Flask application under gunicorn with ``idhub
    serve``'s settings (``idp.cli.gunicorn_options``: gthread, ``workers`` × ``threads``) whose POST parses the
    JSON body, inserts it as one row (a uuid, a timestamp and the JSON document) into PostgreSQL with a prebuilt
    SQLAlchemy Core statement, commits, and answers 201 with the stored document: no authentication, no rules,
    no index rows, no audit event."""
    from flask import Flask, jsonify, request
    from gunicorn.app.base import BaseApplication
    from sqlalchemy import JSON, Column, DateTime, MetaData, String, Table

    from idp.cli import gunicorn_options

    meta = MetaData()
    table = Table("floor_creates", meta, Column("id", String(36), primary_key=True),
                  Column("created_at", DateTime(timezone=True)), Column("body", JSON))
    boot = create_engine(url)
    meta.create_all(boot)
    boot.dispose()
    ins = insert(table)
    engines: dict[int, object] = {}

    def engine():
        pid = os.getpid()  # one pool per worker (after the fork)
        if pid not in engines:
            engines[pid] = create_engine(url, pool_size=threads, max_overflow=threads)
        return engines[pid]

    app = Flask("floor")

    @app.post("/Users")
    def create():
        doc = request.get_json(force=True)
        row = {"id": str(uuid.uuid4()), "created_at": datetime.now(UTC), "body": doc}
        with engine().begin() as conn:
            conn.execute(ins, row)
        return jsonify({**doc, "id": row["id"]}), 201

    class Server(BaseApplication):
        def load_config(self):
            for key, value in gunicorn_options("127.0.0.1", port, workers, threads).items():
                self.cfg.set(key, value)

        def load(self):
            return app

    Server().run()


def run_floor(n: int, args) -> dict:
    """``serve_floor`` on a fresh PostgreSQL database, driven like the creates of ``measure`` (same client, same
    concurrency, same documents, after a warm-up)."""
    from tests.helpers.smtp import free_port
    from tests.services import drop_postgres, postgres_url

    url = postgres_url()
    port = free_port()
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve-floor", str(port),
                             "--floor-url", url, "--workers", str(args.workers), "--threads", str(args.threads)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_listening(proc, port, "the floor app", log=log)

        def docs(tag: str, count: int) -> list:
            out = []
            for k in range(count):
                d = user_doc(n + k)
                d["userName"] = d["emails"][0]["value"] = f"new{k:05d}-{tag}@bench.test"
                out.append(("POST", "/Users", json.dumps(d).encode()))
            return out

        def created(status, raw):
            return None if status == 201 else f"floor: create {status} {raw[:300]!r}"

        _parallel(base, docs("floor-warm", 20 * args.concurrency), args.concurrency, created)
        meter = CpuMeter(proc.pid, urlsplit(url).path.lstrip("/"))
        before = meter.snapshot()
        _, wall = _parallel(base, docs("floor", args.creates), args.concurrency, created)
        cpu = cpu_delta(before, meter.snapshot()) / args.creates * 1000
        print(f"  floor (bare Flask + one Core INSERT of the JSON body + COMMIT, PostgreSQL): "
              f"{args.creates / wall:.1f} creates/s, server CPU {cpu:.2f} ms/create", flush=True)
        return {"creates": args.creates / wall, "cpu": {"create": cpu}, "load": loadavg()}
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(10)
        log.close()
        drop_postgres(url)


def _cpu(r: dict) -> str:
    return "  ".join(f"{k} {v:.2f}" for k, v in r.get("cpu", {}).items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--lookups", type=int, default=500)
    ap.add_argument("--pages", type=int, default=200)
    ap.add_argument("--creates", type=int, default=2000,
                    help="POST /Users per server and for the floor (a few seconds of each; 300 was half a second)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-sqlite", action="store_true")
    ap.add_argument("--threads", type=int, default=4, help="per worker (idhub serve's default is 4)")
    ap.add_argument("--concurrency", type=int, default=4, help="client connections, each keep-alive")
    ap.add_argument("--no-explain", action="store_true")
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--no-postgres", action="store_true")
    ap.add_argument("--profile", action="store_true", help="py-spy flame graphs of the server workers under /tmp")
    ap.add_argument("--no-floor", action="store_true",
                    help="skip the floor row (a bare Flask app's durable one-row create on PostgreSQL)")
    ap.add_argument("--serve-peer", type=int, metavar="PORT", help=argparse.SUPPRESS)
    ap.add_argument("--serve-floor", type=int, metavar="PORT", help=argparse.SUPPRESS)
    ap.add_argument("--floor-url", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_peer:
        serve_peer(args.serve_peer, args.users, args.workers, args.threads)
        return
    if args.serve_floor:
        serve_floor(args.serve_floor, args.floor_url, args.workers, args.threads)
        return
    os.chdir(REPO)
    from tests.services import drop_postgres, postgres_url

    n = args.users
    print(f"SCIM benchmark: {n} users, {args.lookups} lookups, {args.pages} pages, {args.creates} creates; "
          f"load {loadavg()}, {os.cpu_count()} CPUs", flush=True)
    print(f"servers: {args.workers} gunicorn workers × {args.threads} threads each; client: {args.concurrency} "
          "keep-alive connections (http.client), one thread each", flush=True)
    results = {}
    if not args.no_postgres:
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
    if args.no_peer:
        for name, r in results.items():
            print(f"{name:18} p50 {r['p50']:.2f}ms p99 {r['p99']:.2f}ms pages/s {r['pages']:.1f} "
                  f"creates/s {r['creates']:.1f}  load {r['load']}  server CPU ms/request {_cpu(r)}")
        return
    for name, r in results.items():  # as soon as measured, should the peer's run fail
        print(f"{name:18} p50 {r['p50']:.2f}ms p99 {r['p99']:.2f}ms pages/s {r['pages']:.1f} "
              f"creates/s {r['creates']:.1f}  load {r['load']}  server CPU ms/request {_cpu(r)}", flush=True)
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
    print("\nserver CPU per request (gunicorn arbiter + workers, + PostgreSQL backends for idhub/PostgreSQL), ms:")
    for name, r in results.items():
        print(f"{name:18} {_cpu(r)}")
    if not args.no_floor:
        floor = run_floor(n, args)
        print(f"\nfloor of a durable create (bare Flask + Core INSERT + COMMIT on PostgreSQL, same gunicorn settings, "
              f"client and concurrency): {floor['creates']:.1f} creates/s = {floor['creates'] / peer['creates']:.2f}x "
              f"scim2-server's {peer['creates']:.1f}/s; server CPU {floor['cpu']['create']:.2f} ms/create")
        for name, r in results.items():
            if name.startswith("idhub"):
                print(f"{name:18} creates at {r['creates'] / floor['creates']:.2f}x the floor "
                      f"({r['creates'] / peer['creates']:.2f}x scim2-server)")
    print(f"load average at the end: {loadavg()}")
    print("all goals met" if ok else "some goals not met (see above)")


if __name__ == "__main__":
    main()
