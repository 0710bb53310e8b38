"""A circuit breaker for a backend that may go away or freeze (Redis). Plain Python.

Closed: calls go through. The first outage error opens it: for ``period`` seconds every call fails at once,
without touching the network. After the period exactly one call (of all threads of the process) is let through
as a trial; its success closes the breaker, its failure opens it for another period. So a frozen backend costs a
process at most one socket timeout per period (plus the calls already in flight when it froze), instead of one
per request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class Breaker:
    def __init__(self, name: str, period: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.period = period
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CLOSED
        self._open_until = 0.0
        self._trial = False  # a half-open trial call is under way
        self.opened = 0  # how many times it opened (for /metrics and tests)
        self.listeners: list[Callable[[bool], None]] = []  # called with True when closed again, False when opened

    @property
    def state(self) -> str:
        with self._lock:
            if self._state == OPEN and self._clock() >= self._open_until:
                return HALF_OPEN
            return self._state

    @property
    def available(self) -> bool:
        """Whether the backend answered the last call (an open breaker says no)."""
        return self.state == CLOSED

    def allow(self) -> bool:
        """May a call go to the backend now? When the period is over, True for one caller only (the trial)."""
        with self._lock:
            if self._state == CLOSED:
                return True
            if self._trial or self._clock() < self._open_until:
                return False
            self._trial = True
            self._state = HALF_OPEN
            return True

    def success(self) -> None:
        with self._lock:
            was = self._state
            self._state, self._trial = CLOSED, False
        if was != CLOSED:
            log.info("%s is back; circuit closed", self.name)
            self._tell(True)

    def abandon(self) -> None:
        """A call ended without a verdict (interrupted): let the next caller make the trial."""
        with self._lock:
            self._trial = False

    def failure(self) -> None:
        with self._lock:
            was = self._state
            self._state, self._trial = OPEN, False
            self._open_until = self._clock() + self.period
            if was == CLOSED:
                self.opened += 1
        if was == CLOSED:
            log.warning("%s unavailable; circuit open, retried every %.1fs", self.name, self.period)
            self._tell(False)

    def _tell(self, up: bool) -> None:
        for listener in self.listeners:
            try:
                listener(up)
            except Exception:  # a listener never breaks the caller
                log.exception("breaker listener failed")
