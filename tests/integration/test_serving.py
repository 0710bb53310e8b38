"""``idhub serve``: gunicorn's stock gthread worker, with idhub's settings, serving more keep-alive clients than it
has threads and stopping cleanly on SIGTERM (what a service manager or a container runtime sends)."""

from __future__ import annotations

import http.client
import signal
import threading

from gunicorn.config import Config
from gunicorn.workers.gthread import ThreadWorker

from idp.cli import gunicorn_options
from tests.helpers.live import LiveHub


def test_idhub_serve_runs_gunicorns_own_gthread_worker():
    cfg = Config()
    for key, value in gunicorn_options("0.0.0.0", 8000, 3, 4).items():
        cfg.set(key, value)
    assert cfg.worker_class is ThreadWorker  # gunicorn's class itself, not a subclass of its internals
    assert (cfg.workers, cfg.threads, cfg.address) == (3, 4, [("0.0.0.0", 8000)])
    assert gunicorn_options("::", 8000, 1, 1)["bind"] == "[::]:8000"


def test_more_keep_alive_clients_than_threads_are_all_served_and_sigterm_stops_it():
    with LiveHub(workers=2, extra_env={"IDHUB_MAINTENANCE_INTERVAL": "0"}) as hub:
        port = hub.port
        answers: list[int] = []
        errors: list[BaseException] = []

        def client():
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
                for _ in range(10):
                    c.request("GET", "/healthz")
                    r = c.getresponse()
                    r.read()
                    answers.append(r.status)
                c.close()
            except BaseException as exc:  # reported below
                errors.append(exc)

        clients = [threading.Thread(target=client) for _ in range(12)]  # 12 connections, 2 workers x 4 threads
        for t in clients:
            t.start()
        for t in clients:
            t.join(60)
        assert not errors, errors
        assert answers == [200] * 120
        hub.proc.send_signal(signal.SIGTERM)
        assert hub.proc.wait(20) == 0, hub.log_tail()
