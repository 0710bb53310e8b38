"""The gunicorn worker ``idhub serve`` runs: gthread, with accepts spread over the workers.

All of gunicorn's workers wait on the one listening socket, and the kernel hands a new connection to whichever
worker asks first. A worker stays in that race while its threads are busy with requests (its main thread keeps
polling), so two clients that arrive together often both land on one worker while the others idle: with
keep-alive connections that worker serves both for as long as they live, at half the throughput the machine
has, its threads contending for one interpreter lock. ``BalancedThreadWorker`` steps aside for a moment when it
has a request in progress and the server has other workers (nginx's ``accept_mutex_delay`` idea): it stops
polling the listener for ``ACCEPT_DELAY`` seconds, so that an idle worker takes the connection; when that time
is up it accepts whatever is still waiting — when every worker is busy, a new connection waits at most
``ACCEPT_DELAY`` longer than it would have.
"""

from __future__ import annotations

import errno
import time

from gunicorn.workers.gthread import TConn, ThreadWorker

ACCEPT_DELAY = 0.002  # seconds a busy worker leaves a new connection to the idle ones
ACCEPT_BATCH = 16  # connections a worker takes at most when its pause ends (the rest wait for the next turn)


class AcceptGate:
    """When a worker accepts, as plain state (no sockets): ``ready`` answers a readable listener, ``timeout``
    bounds the poll while paused, ``due`` says when the pause is over."""

    def __init__(self, peers: int, delay: float = ACCEPT_DELAY) -> None:
        self.peers = peers  # other workers that could take a connection
        self.delay = delay
        self.resume_at = 0.0  # 0: not paused

    def ready(self, now: float, in_flight: int) -> bool:
        """A connection is waiting: accept it now (True), or pause (False) so that an idle worker takes it."""
        if self.resume_at:
            return now >= self.resume_at
        if self.peers and in_flight:
            self.resume_at = now + self.delay
            return False
        return True

    @property
    def paused(self) -> bool:
        return self.resume_at != 0.0

    def timeout(self, now: float, default: float) -> float:
        return min(default, max(self.resume_at - now, 0.0)) if self.resume_at else default

    def due(self, now: float) -> bool:
        """The pause is over (and is ended): the caller takes what is still waiting."""
        if self.resume_at and now >= self.resume_at:
            self.resume_at = 0.0
            return True
        return False


class BalancedThreadWorker(ThreadWorker):
    """gunicorn's gthread worker with ``AcceptGate`` in front of ``accept``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gate = AcceptGate(peers=max(self.cfg.workers - 1, 0))
        self.in_flight = 0

    def enqueue_req(self, conn) -> None:
        self.in_flight += 1
        super().enqueue_req(conn)

    def finish_request(self, conn, fs) -> None:
        self.in_flight -= 1
        super().finish_request(conn, fs)

    def set_accept_enabled(self, enabled: bool) -> None:
        super().set_accept_enabled(enabled and not self.gate.paused)

    def accept(self, listener) -> None:
        if self.gate.ready(time.monotonic(), self.in_flight):
            super().accept(listener)
        else:
            super().set_accept_enabled(False)  # until the pause is over (wait_for_and_dispatch_events)

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        super().wait_for_and_dispatch_events(self.gate.timeout(time.monotonic(), timeout))
        if self.gate.due(time.monotonic()) and self.alive:
            for listener in self.sockets:
                self._take_waiting(listener)
            self.set_accept_enabled(self.nr_conns < self.worker_connections)

    def _take_waiting(self, listener) -> None:
        """Accept the connections still queued on ``listener`` (none left: the idle workers took them)."""
        for _ in range(ACCEPT_BATCH):
            if self.nr_conns >= self.worker_connections:
                return
            try:
                client_sock, client_addr = listener.accept()
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.ECONNABORTED):
                    return
                raise
            self.nr_conns += 1
            client_sock.setblocking(True)
            self.enqueue_req(TConn(self.cfg, client_sock, client_addr, listener.getsockname()))
