"""The gunicorn worker ``idhub serve`` runs: gthread, with new connections steered to idle workers.

All of gunicorn's workers wait on the one listening socket, and the kernel hands a new connection to whichever
worker asks first. A worker stays in that race while its threads are busy with requests (its main thread keeps
polling), so two clients that arrive together often both land on one worker while another idles: with
keep-alive connections that worker serves both for as long as they live, at half the throughput the machine
has, its threads contending for one interpreter lock.

``BalancedThreadWorker`` steps aside when it has a request in progress *and another worker is idle* (nginx's
accept mutex idea): it stops polling the listener for ``ACCEPT_DELAY`` seconds, or until its own requests are
done, so that the idle worker — woken by the same connection — takes it; when the pause is over it accepts
whatever is still waiting. Which workers are idle is on a ``WorkerBoard``, a few bytes of memory the arbiter maps
before it forks and each worker updates when its count of requests in progress changes. When every worker is
busy nobody pauses, so under full load accepting works exactly as in plain gthread.
"""

from __future__ import annotations

import mmap
import multiprocessing
import os
import time
from collections.abc import Callable

from gunicorn.workers.gthread import ThreadWorker

ACCEPT_DELAY = 0.002  # seconds a busy worker leaves a new connection to an idle one (epoll: whole ms)
ACCEPT_BATCH = 16  # connections a worker takes at most when its pause ends (the rest at its next turns)
BOARD_SLOTS = 64  # workers the board follows; a worker without a slot never pauses (plain gthread)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - a pid reused by another user's process
        return False
    return True


class WorkerBoard:
    """Each worker's pid and number of requests in progress, in anonymous shared memory.

    Made at import, that is in gunicorn's arbiter (which imports the worker class before it forks), so that
    every worker shares it. A worker claims a free slot (or one whose process is gone) when it starts and frees
    it when it stops; a worker killed outright leaves its slot to the next one to start."""

    def __init__(self, slots: int = BOARD_SLOTS) -> None:
        self._mm = mmap.mmap(-1, slots * 16)  # MAP_SHARED | MAP_ANONYMOUS: inherited across fork, not copied
        self._cells = memoryview(self._mm).cast("q")  # [pid, in_flight] per slot, aligned 8-byte words
        try:
            self._lock = multiprocessing.Lock()  # claiming only; each slot has one writer afterwards
        except OSError:  # no POSIX semaphores here (a locked-down /dev/shm): no board, workers never pause
            self._lock, slots = None, 0
        self._slots = slots
        self.slot: int | None = None
        self.pid = 0

    def claim(self, pid: int) -> bool:
        if self._lock is None:
            return False
        with self._lock:
            for i in range(self._slots):
                other = self._cells[2 * i]
                if other == 0 or other == pid or not _alive(other):
                    self._cells[2 * i], self._cells[2 * i + 1] = pid, 0
                    self.slot, self.pid = i, pid
                    return True
        return False

    def release(self) -> None:
        if self.slot is not None and self._cells[2 * self.slot] == self.pid:
            self._cells[2 * self.slot] = 0
        self.slot = None

    def set_in_flight(self, n: int) -> None:
        if self.slot is not None:
            self._cells[2 * self.slot + 1] = n

    def idle_peer(self) -> bool:
        """Whether another live worker has no request in progress right now."""
        if self.slot is None:
            return False
        for i in range(self._slots):
            pid = self._cells[2 * i]
            if pid and i != self.slot and self._cells[2 * i + 1] == 0 and _alive(pid):
                return True
        return False


BOARD = WorkerBoard()


class AcceptGate:
    """When a worker accepts, as plain state (no sockets): ``ready`` answers a readable listener, ``timeout``
    bounds the poll while paused, ``due`` says when the pause is over."""

    def __init__(self, idle_peer: Callable[[], bool], delay: float = ACCEPT_DELAY) -> None:
        self.idle_peer = idle_peer
        self.delay = delay
        self.resume_at = 0.0  # 0: not paused

    def ready(self, now: float, in_flight: int) -> bool:
        """A connection is waiting: accept it now (True), or pause (False) so that an idle worker takes it."""
        if self.resume_at:
            if now < self.resume_at:
                return False
            self.resume_at = 0.0
            return True
        if in_flight and self.idle_peer():
            self.resume_at = now + self.delay
            return False
        return True

    @property
    def paused(self) -> bool:
        return self.resume_at != 0.0

    def timeout(self, now: float, default: float) -> float:
        return min(default, max(self.resume_at - now, 0.0)) if self.resume_at else default

    def due(self, now: float, in_flight: int) -> bool:
        """The pause is over — its time is up, or this worker has become idle itself — and is ended: the caller
        takes what is still waiting."""
        if self.resume_at and (now >= self.resume_at or not in_flight):
            self.resume_at = 0.0
            return True
        return False


class BalancedThreadWorker(ThreadWorker):
    """gunicorn's gthread worker with ``AcceptGate`` in front of ``accept``."""

    board = BOARD
    accept_delay = ACCEPT_DELAY

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gate = AcceptGate(self.board.idle_peer, self.accept_delay)
        self.in_flight = 0

    def init_process(self) -> None:
        self.board.claim(os.getpid())
        try:
            super().init_process()  # runs the worker until it stops
        finally:
            self.board.release()

    def enqueue_req(self, conn) -> None:
        self.in_flight += 1
        self.board.set_in_flight(self.in_flight)
        super().enqueue_req(conn)

    def finish_request(self, conn, fs) -> None:
        self.in_flight -= 1
        self.board.set_in_flight(self.in_flight)
        super().finish_request(conn, fs)
        self._resume_if_due()  # idle again: no reason to leave the next connection to the others

    def set_accept_enabled(self, enabled: bool) -> None:
        super().set_accept_enabled(enabled and not self.gate.paused)

    def accept(self, listener) -> None:
        if self.gate.ready(time.monotonic(), self.in_flight):
            super().accept(listener)
        else:
            super().set_accept_enabled(False)  # until the pause is over (wait_for_and_dispatch_events)

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        super().wait_for_and_dispatch_events(self.gate.timeout(time.monotonic(), timeout))
        self._resume_if_due()

    def _resume_if_due(self) -> None:
        if self.gate.due(time.monotonic(), self.in_flight) and self.alive:
            for listener in self.sockets:
                self._take_waiting(listener)
            self.set_accept_enabled(self.nr_conns < self.worker_connections)

    def _take_waiting(self, listener) -> None:
        """Accept the connections still queued on ``listener`` (usually none: the idle worker took it)."""
        listener.setblocking(False)  # never wait here: an empty queue is the usual case
        for _ in range(ACCEPT_BATCH):
            if self.nr_conns >= self.worker_connections:
                return
            taken = self.nr_conns
            ThreadWorker.accept(self, listener)  # gthread's own accept; an empty queue (EAGAIN) takes nothing
            if self.nr_conns == taken:
                return
