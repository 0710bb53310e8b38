"""The cost of a policy evaluation and of a TOTP verification per sign-in, as a fraction of one password hash.

    .venv/bin/python bench/policy_totp.py [--iterations 2000] [--totp 300] [--hashes 60] [--no-postgres]

All in one process, one thread, one after the other, so every number shares the same machine state:
- ``Hasher().verify`` at the OWASP parameters (argon2id, m=19 MiB, t=2, p=1): the unit.
- ``PolicyEngine().evaluate(ctx)`` (no audit hook: the engine alone) for three sign-in contexts: no policy;
  an IP allowlist of 50 CIDRs (25 IPv4 + 25 IPv6, the client in the last one: the worst case); require_mfa
  for a user with TOTP and backup codes enrolled (the decision is "mfa").
- ``MfaService.totp_verify`` on SQLite and on a fresh PostgreSQL database (``tests.services.postgres_url``,
  tables by ``idp.schema.upgrade``). A code passes only for a step after the last accepted one, so the hub's
  clock is a fake that advances one 30 s step per verification, and every code is computed by pyotp for it.
  Each one is the real thing: the throttle read, the row read, the secret decrypted, the conditional UPDATE,
  the throttle reset.
Prints per-op p50 / p99 latency (wall), ops/s (1 / mean) and p50 as a fraction of one hash's p50.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from _common import PASSWORD, loadavg, pct


def timed(fn, n: int, warmup: int = 20) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def allowlist_50() -> tuple[list[str], str]:
    v4 = [str(ipaddress.ip_network(f"10.{i}.0.0/16")) for i in range(24)] + ["203.0.113.0/24"]
    v6 = [str(ipaddress.ip_network(f"2001:db8:{i:x}::/48")) for i in range(25)]
    return v4 + v6, "203.0.113.77"  # in the last IPv4 network: every IPv4 entry is compared


def policy_cases():
    from policies.engine import PolicyContext

    cidrs, ip = allowlist_50()
    base = dict(workspace_id="ws1", plan="enterprise", client_ip=ip, stage="signin", user_id="u1",
                methods=("pwd",))
    return [
        ("policy: no policy", PolicyContext(policies={}, **base), "allow"),
        ("policy: IP allowlist, 50 CIDRs", PolicyContext(policies={"ip_allowlist": cidrs}, **base), "allow"),
        ("policy: require_mfa, enrolled", PolicyContext(policies={"require_mfa": True},
                                                        enrolled=("totp", "backup_codes"), **base), "mfa"),
    ]


class FakeClock:
    def __init__(self):
        self.now = datetime(2030, 1, 1, tzinfo=UTC)

    def __call__(self):
        return self.now


def totp_bench(database_url: str, n: int) -> list[float]:
    """Latencies of ``n`` successful ``totp_verify`` calls, each for the next 30 s step."""
    import pyotp

    from config.settings import Settings
    from idp import schema
    from idp.accounts import user_by_email, workspace_by_slug
    from idp.app import build_hub
    from idp.configfile import apply, validate
    from idp.passwords import Hasher

    tmp = tempfile.mkdtemp(prefix="idhub-bench-")
    try:
        schema.upgrade(database_url)
        settings = Settings(database_url=database_url, secret_key=secrets.token_urlsafe(48), outbox_dir=tmp,
                            cookie_secure=False, base_url="http://localhost", log_level="WARNING")
        hub = build_hub(settings, hasher=Hasher(time_cost=1, memory_cost=1024))  # setup only; not timed
        clock = FakeClock()
        hub.clock = clock
        with hub.db() as db:
            apply(db, validate({"workspaces": [{"slug": "bench", "name": "Bench", "plan": "enterprise",
                                                "users": [{"email": "t@bench.test", "password": PASSWORD}]}]}),
                  hub.hasher)
            db.commit()
            user_id = user_by_email(db, workspace_by_slug(db, "bench").id, "t@bench.test").id
        setup = hub.mfa.totp_begin(user_id, "t@bench.test")
        totp = pyotp.TOTP(setup.secret)
        assert hub.mfa.totp_confirm(user_id, totp.at(clock.now))
        step = timedelta(seconds=30)

        def one():
            clock.now += step
            if not hub.mfa.totp_verify(user_id, totp.at(clock.now)):
                raise SystemExit("totp_verify refused a fresh code")

        lat = timed(one, n)
        hub.engine.dispose()
        return lat
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=2000, help="policy evaluations per context")
    ap.add_argument("--totp", type=int, default=300, help="TOTP verifications per database")
    ap.add_argument("--hashes", type=int, default=60, help="argon2id verifies (taken half before, half after)")
    ap.add_argument("--no-postgres", action="store_true")
    args = ap.parse_args()

    from idp.passwords import Hasher
    from policies.engine import PolicyEngine

    print(f"idhub policy/TOTP benchmark  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  {os.cpu_count()} CPUs  "
          f"load {loadavg()} (start)  one thread", flush=True)
    h = Hasher()
    stored = h.hash(PASSWORD)
    hash_lat = timed(lambda: h.verify(stored, PASSWORD), args.hashes // 2, warmup=5)

    rows = []
    engine = PolicyEngine()
    for name, ctx, expect in policy_cases():
        assert engine.evaluate(ctx).effect == expect, name
        rows.append((name, timed(lambda ctx=ctx: engine.evaluate(ctx), args.iterations, warmup=200)))

    tmp = Path(tempfile.mkdtemp(prefix="idhub-bench-sqlite-"))
    try:
        rows.append(("totp_verify: SQLite", totp_bench(f"sqlite:///{tmp / 'idhub.db'}", args.totp)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not args.no_postgres:
        from tests.services import drop_postgres, postgres_url

        url = postgres_url()
        try:
            rows.append(("totp_verify: PostgreSQL", totp_bench(url, args.totp)))
        finally:
            drop_postgres(url)

    hash_lat += timed(lambda: h.verify(stored, PASSWORD), args.hashes - args.hashes // 2, warmup=2)
    hp50 = statistics.median(hash_lat)
    us = 1e6
    print()
    print(f"  {'operation':34s} {'p50':>10s} {'p99':>10s} {'ops/s':>10s} {'p50 / hash':>11s}")
    print(f"  {'argon2id verify (the unit)':34s} {hp50 * 1000:8.2f}ms {pct(hash_lat, 99) * 1000:8.2f}ms "
          f"{1 / statistics.fmean(hash_lat):10.1f} {1:11.4f}")
    for name, lat in rows:
        p50 = statistics.median(lat)
        print(f"  {name:34s} {p50 * us:8.1f}us {pct(lat, 99) * us:8.1f}us {1 / statistics.fmean(lat):10.0f} "
              f"{p50 / hp50:10.2%}")
    print(f"  load at end {loadavg()}")


if __name__ == "__main__":
    main()
