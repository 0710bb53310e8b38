"""Races for tests: release N threads at once."""

from __future__ import annotations

import threading


def parallel(n: int, fn) -> list:
    """Run ``fn()`` in ``n`` threads released together; returns the results (re-raises errors)."""
    barrier = threading.Barrier(n)
    results: list = [None] * n
    errors: list = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = fn()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    if errors:
        raise errors[0]
    return results
