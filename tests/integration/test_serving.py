"""idhub serve's gunicorn worker: connections that arrive while a worker is busy go to an idle worker."""

from __future__ import annotations

import http.client
import subprocess
import sys
import threading
import time

import pytest

from idp.serving import AcceptGate
from tests.helpers.smtp import free_port

APP = '''import os, time

def app(environ, start_response):
    time.sleep(float(environ.get("QUERY_STRING") or 0))
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''


# ---- the gate on its own --------------------------------------------------------------------------------
def test_an_idle_worker_accepts_at_once():
    gate = AcceptGate(peers=1, delay=0.002)
    assert gate.ready(10.0, in_flight=0)
    assert not gate.paused


def test_a_busy_worker_pauses_then_takes_what_is_left():
    gate = AcceptGate(peers=1, delay=0.002)
    assert not gate.ready(10.0, in_flight=1)
    assert gate.paused
    assert gate.timeout(10.0, 1.0) == pytest.approx(0.002)  # the poll wakes up when the pause ends
    assert not gate.due(10.001)
    assert gate.due(10.002)
    assert not gate.paused and gate.timeout(10.002, 1.0) == 1.0


def test_a_lone_worker_never_pauses():
    gate = AcceptGate(peers=0)
    assert gate.ready(10.0, in_flight=3)
    assert not gate.paused


# ---- real gunicorn ---------------------------------------------------------------------------------------
@pytest.fixture
def server(tmp_path):
    (tmp_path / "slowapp.py").write_text(APP)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-k", "idp.serving.BalancedThreadWorker", "-w", "2", "--threads", "4",
         "-b", f"127.0.0.1:{port}", "slowapp:app"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    pids: set[str] = set()
    while time.monotonic() < deadline and len(pids) < 2:  # both workers up: each has answered once
        try:
            pids.add(get(port, 0))
        except OSError:
            time.sleep(0.1)
    assert len(pids) == 2, proc.stderr.read1().decode() if proc.poll() is not None else "workers did not start"
    yield port
    proc.terminate()
    proc.wait(15)


def get(port: int, sleep: float, conn: http.client.HTTPConnection | None = None) -> str:
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", f"/?{sleep}")
    r = c.getresponse()
    assert r.status == 200
    body = r.read().decode()
    if conn is None:
        c.close()
    return body


def test_a_connection_arriving_while_a_worker_is_busy_goes_to_the_idle_one(server):
    for _ in range(12):  # left to the kernel (plain gthread), the busy worker wins about one race in eight
        first: list[str] = []
        t = threading.Thread(target=lambda: first.append(get(server, 0.25)))
        t.start()
        time.sleep(0.08)  # the first request is being served
        second = get(server, 0)
        t.join()
        assert second != first[0], "the second connection was accepted by the busy worker"


def test_when_every_worker_is_busy_a_new_connection_is_still_served(server):
    out: list[str] = []
    threads = [threading.Thread(target=lambda: out.append(get(server, 0.3))) for _ in range(6)]
    for t in threads:
        t.start()
        time.sleep(0.02)
    for t in threads:
        t.join()
    assert len(out) == 6 and len(set(out)) == 2  # all answered, by both workers


def test_keep_alive_connections_stay_with_their_worker(server):
    a = http.client.HTTPConnection("127.0.0.1", server, timeout=10)
    pid = get(server, 0, a)
    assert all(get(server, 0, a) == pid for _ in range(5))
    a.close()
