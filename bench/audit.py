"""Audit events/s for one workspace from concurrent writers on PostgreSQL: before (one chain-head lock held to each
writer's commit) and after (append without a lock, sealed by a background sealer), in the same run.

    .venv/bin/python bench/audit.py [--seconds 5] [--writers 32] [--procs 4] [--work-ms 1]

Each writer is a thread (``--writers`` spread over ``--procs`` processes, so that the client's GIL is not the
limit) that loops over one audited "request": a transaction that appends the request's event and then does
``--work-ms`` more of the request's work before committing (``record(connection=...)`` as SCIM and account
changes do; 0 = the event is the transaction's last statement, as in ``record()``). Counted: events durable
(committed) in the timed window. *Before* is the previous release's ``idp/audit.py`` (read from git,
``--before-rev``, default ``e1df45e^``: the last commit before the sealed chain) on a database of its own;
*after* is this tree's. For *after* the sealer's drain (time from the writers' stop until every event is sealed)
is printed too, and both chains are verified.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import re
import subprocess
import sys
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import REPO, loadavg  # noqa: E402

SECRET = "b" * 48


def load_before(rev: str):
    """The previous release's audit module, on a declarative base of its own (same table names)."""
    src = subprocess.run(["git", "show", f"{rev}:idp/audit.py"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    src, n = re.subn(r"^from idp\.db import Base(, )?", lambda m: "from sqlalchemy.orm import DeclarativeBase\n\n\n"
                     "class Base(DeclarativeBase):\n    pass\n\n\n" + ("from idp.db import " if m.group(1) else ""),
                     src, count=1, flags=re.M)
    assert n == 1, f"{rev}:idp/audit.py does not import Base from idp.db"
    mod = types.ModuleType("audit_before")
    sys.modules["audit_before"] = mod
    exec(compile(src, f"{rev}:idp/audit.py", "exec"), mod.__dict__)
    return mod


def make_log(which: str, url: str, rev: str):
    from idp.db import make_engine, make_sessionmaker

    engine = make_engine(url)
    sm = make_sessionmaker(engine)
    if which == "before":
        return load_before(rev).AuditLog(sm), sm
    from idp.audit import AuditLog

    return AuditLog(sm, secrets=[SECRET], seal="background", seal_interval=0.2), sm


def writer_proc(which, url, rev, threads, seconds, warmup, work_ms, start, out):
    import threading

    from sqlalchemy import text

    log, sm = make_log(which, url, rev)
    counts = [0] * threads
    stop_at = [0.0]
    go = threading.Barrier(threads + 1)

    def loop(k: int) -> None:
        go.wait()
        while True:
            t = time.monotonic()
            if t >= stop_at[0]:
                return
            with sm() as db:
                db.execute(text("SELECT 1"))  # the request's own work before its event
                log.record("scim.user.created", workspace_id="ws-bench", actor_email="bench", subject_id=str(k),
                           data={"k": k}, connection=db.connection())
                if work_ms:
                    time.sleep(work_ms / 1000)
                db.commit()
            if t >= stop_at[0] - seconds:
                counts[k] += 1

    pool = [threading.Thread(target=loop, args=(k,), daemon=True) for k in range(threads)]
    for t in pool:
        t.start()
    start.wait()
    stop_at[0] = time.monotonic() + warmup + seconds
    go.wait()
    for t in pool:
        t.join()
    out.put(sum(counts))
    if which == "after":
        log.stop()


def run(which: str, url: str, args) -> dict:
    ctx = mp.get_context("fork")
    start, out = ctx.Barrier(args.procs + 1), ctx.Queue()
    per = [args.writers // args.procs + (1 if i < args.writers % args.procs else 0) for i in range(args.procs)]
    procs = [ctx.Process(target=writer_proc, args=(which, url, args.before_rev, n, args.seconds, args.warmup,
                                                   args.work_ms, start, out)) for n in per]
    for p in procs:
        p.start()
    start.wait()
    t0 = time.monotonic()
    total = sum(out.get(timeout=args.seconds + args.warmup + 120) for _ in procs)
    for p in procs:
        p.join(60)
    writers_done = time.monotonic()
    res = {"events_per_s": total / args.seconds}
    log, _ = make_log(which, url, args.before_rev)
    if which == "after":
        from sqlalchemy import text

        with log._engine.connect() as conn:
            pending = conn.execute(text("SELECT count(*) FROM audit_events WHERE seq IS NULL")).scalar()
        t = time.monotonic()
        log.seal()
        res["pending_at_stop"] = pending
        res["drain_s"] = time.monotonic() - t
        res["elapsed_s"] = time.monotonic() - t0
        res["verify"] = log.verify("ws-bench")
    else:
        res["elapsed_s"] = writers_done - t0
        res["verify"] = log.verify("ws-bench")
    return res


def fresh_db(which: str, rev: str) -> str:
    from idp import schema
    from tests.services import postgres_url

    url = postgres_url()
    if which == "after":
        schema.upgrade(url)
    else:
        from idp.db import make_engine

        mod = load_before(rev)
        engine = make_engine(url)
        mod.Base.metadata.create_all(engine)
        engine.dispose()
    return url


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--warmup", type=float, default=1)
    ap.add_argument("--writers", type=int, default=32)
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--work-ms", default="0,1", help="comma-separated; the request's work after its event")
    ap.add_argument("--before-rev", default="e1df45e^")
    args = ap.parse_args()
    from tests.services import drop_postgres

    print(f"audit benchmark  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  load {loadavg()}  "
          f"{args.writers} writers in {args.procs} processes, one workspace, PostgreSQL")
    for work in [float(w) for w in args.work_ms.split(",")]:
        args.work_ms = work
        results = {}
        for which in ("before", "after"):
            url = fresh_db(which, args.before_rev)
            try:
                results[which] = run(which, url, args)
            finally:
                drop_postgres(url)
        b, a = results["before"], results["after"]
        print(f"  work after the event {work:g} ms:")
        print(f"    before (lock to commit): {b['events_per_s']:8.0f} events/s   verify ok={b['verify'].ok}")
        print(f"    after (append + seal):   {a['events_per_s']:8.0f} events/s   verify ok={a['verify'].ok} "
              f"({a['verify'].checked} sealed; {a['pending_at_stop']} unsealed when the writers stopped, "
              f"drained in {a['drain_s'] * 1000:.0f} ms)")
        print(f"    ratio after/before: {a['events_per_s'] / b['events_per_s']:.2f}x")
    print(f"load {loadavg()} (end)")


if __name__ == "__main__":
    main()
