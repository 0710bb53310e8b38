"""``idhub serve``'s gunicorn worker against plain gthread: requests per second of a tiny WSGI app.

    .venv/bin/python bench/serving.py [--seconds 4] [--workers 2] [--threads 4]

The same app (sleeps ``work`` ms, answers its pid) under ``gunicorn -k gthread`` and under
``-k idp.serving.BalancedThreadWorker``, same workers and threads, in this run on this machine, one after the
other for each load: ``clients`` processes, each either opening a new connection per request (``close``, as a
proxy without upstream keep-alive) or keeping one (``keep-alive``, as a browser or an SP's HTTP client).
Printed: requests/s, p50 and p99 latency, how many distinct workers answered, and the ratio balanced ÷ gthread.
The balanced worker should never be slower (ratio ≈ 1 or above); with keep-alive clients fewer than the workers
it should use them all.
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing as mp
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import pct

from tests.helpers.smtp import free_port

APP = '''import os, time

def app(environ, start_response):
    time.sleep(float(environ.get("QUERY_STRING") or 0) / 1000)
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''


def client(port: int, work_ms: float, keep_alive: bool, seconds: float, out) -> None:
    headers = {} if keep_alive else {"Connection": "close"}
    lat, pids = [], set()
    conn = None
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        t = time.perf_counter()
        conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", f"/?{work_ms}", headers=headers)
        pids.add(conn.getresponse().read())
        if not keep_alive:
            conn.close()
            conn = None
        lat.append(time.perf_counter() - t)
    if conn is not None:
        conn.close()
    out.put((lat, pids))


def load(port: int, clients: int, work_ms: float, keep_alive: bool, seconds: float) -> tuple[float, list, int]:
    out = mp.Queue()
    procs = [mp.Process(target=client, args=(port, work_ms, keep_alive, seconds, out)) for _ in range(clients)]
    for p in procs:
        p.start()
    results = [out.get(timeout=seconds + 30) for _ in procs]
    for p in procs:
        p.join()
    lat = [x for r in results for x in r[0]]
    pids = set().union(*(r[1] for r in results))
    return len(lat) / seconds, lat, len(pids)


def serve(d: str, worker: str, workers: int, threads: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-k", worker, "-w", str(workers), "--threads",
                             str(threads), "-b", f"127.0.0.1:{port}", "--worker-tmp-dir", "/dev/shm", "app:app"],
                            cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    time.sleep(1.0)  # every worker booted
    return proc, port


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=4)
    a = ap.parse_args()
    loads = [(2, 1, True), (2, 5, True), (2, 1, False), (4, 1, False), (8, 1, False), (8, 5, False), (16, 1, False)]
    print(f"serving: {a.workers} workers x {a.threads} threads, {a.seconds:g} s per load")
    with tempfile.TemporaryDirectory() as d:
        Path(d, "app.py").write_text(APP)
        servers = {w: serve(d, w, a.workers, a.threads) for w in ("gthread", "idp.serving.BalancedThreadWorker")}
        try:
            for clients, work, keep in loads:
                row = {}
                for name, (_proc, port) in servers.items():
                    row[name] = load(port, clients, work, keep, a.seconds)
                (g, gl, gp), (b, bl, bp) = row["gthread"], row["idp.serving.BalancedThreadWorker"]
                print(f"  {clients:>2} clients, {work} ms, {'keep-alive' if keep else 'close':<10}  "
                      f"gthread {g:7.0f}/s p50 {pct(gl, 50) * 1000:5.2f} p99 {pct(gl, 99) * 1000:6.2f} ms "
                      f"{gp} worker(s) | balanced {b:7.0f}/s p50 {pct(bl, 50) * 1000:5.2f} "
                      f"p99 {pct(bl, 99) * 1000:6.2f} ms {bp} worker(s) | ratio {b / g:4.2f}", flush=True)
        finally:
            for proc, _port in servers.values():
                proc.terminate()
                proc.wait(15)


if __name__ == "__main__":
    main()
