"""Shared helpers for the benchmarks: percentiles, CPU accounting from /proc, the argon2id peer, machine load.

Nothing here imports Flask or starts a server (``wait_listening`` waits for one another script started).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import socket
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PASSWORD = "S3cure-Example!"
_TICK = os.sysconf("SC_CLK_TCK")


# ---- statistics ----------------------------------------------------------------------------------
def wait_listening(proc, port: int, what: str, timeout: float = 60.0, log=None) -> None:
    """Until ``proc`` accepts connections on 127.0.0.1:``port``; RuntimeError naming ``what`` (with the end of its
    ``log``, a file it writes to, if given) when it exits first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
            return
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                detail = ""
                if log is not None:
                    log.seek(0)
                    detail = ":\n" + log.read()[-4000:].decode(errors="replace")
                raise RuntimeError(f"{what} did not start{detail}") from None
            time.sleep(0.1)


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(p / 100 * (len(s) - 1)))))]


def loadavg() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


# ---- CPU time of processes -----------------------------------------------------------------------
def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may contain spaces; everything after the last ")" is fixed-format
    return raw[raw.rindex(")") + 2 :].split()


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of one process (0.0 when it is gone)."""
    f = _stat(pid)
    if f is None:
        return 0.0
    # after the name: state(0) ppid(1) … utime(11) stime(12)
    return (int(f[11]) + int(f[12])) / _TICK


def children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            f = _stat(int(d))
            if f is not None and int(f[1]) == pid:
                out.append(int(d))
    return out


def tree_cpu(root: int) -> dict[int, float]:
    """CPU seconds of ``root`` and its direct children (the gunicorn arbiter and its workers), per pid."""
    pids = [root, *children(root)]
    return {p: proc_cpu(p) for p in pids}


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU spent between two snapshots; a pid that appeared in between counts from zero."""
    return sum(v - before.get(p, 0.0) for p, v in after.items())


def self_cpu() -> float:
    """CPU seconds of this process (all its threads): the benchmark client's own cost."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ---- the argon2id peer ---------------------------------------------------------------------------
def _peer_worker(stored: str, warmup: float, seconds: float, barrier, out) -> None:
    """Runs in its own process: import and warm up outside the timed window, then time only the verify loop."""
    from idp.passwords import Hasher

    h = Hasher()
    stop = time.perf_counter() + warmup
    while time.perf_counter() < stop:
        h.verify(stored, PASSWORD)
    barrier.wait()  # every process starts its timed loop at the same moment: the same concurrency throughout
    n = 0
    c0, t0 = time.process_time(), time.perf_counter()
    stop = t0 + seconds
    while time.perf_counter() < stop:
        if not h.verify(stored, PASSWORD):
            raise SystemExit("argon2 verify failed")
        n += 1
    out.put((n, time.perf_counter() - t0, time.process_time() - c0))


def argon2_peer(seconds: float, concurrency: int, warmup: float = 1.0) -> dict:
    """argon2id verify (idp.passwords.Hasher, the OWASP parameters) in ``concurrency`` processes.

    Returns verifies/s (the sum of each process's own rate over its own timed loop), CPU seconds per verify
    and wall-clock ms per verify. Process start-up, imports and warm-up are outside the timed window.
    """
    from idp.passwords import Hasher

    stored = Hasher().hash(PASSWORD)
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(concurrency), ctx.Queue()
    procs = [ctx.Process(target=_peer_worker, args=(stored, warmup, seconds, barrier, out)) for _ in range(concurrency)]
    for p in procs:
        p.start()
    results = [out.get(timeout=seconds + warmup + 120) for _ in procs]
    for p in procs:
        p.join()
    n = sum(r[0] for r in results)
    return {
        "rate": sum(r[0] / r[1] for r in results),
        "cpu_per_op": sum(r[2] for r in results) / n,
        "wall_per_op": sum(r[1] for r in results) / n,  # per process; == latency of one verify under load
        "count": n,
    }
