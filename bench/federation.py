"""Upstream OIDC callbacks completed per second, beside authlib's raw ID token validation, same process, same run.

    .venv/bin/python bench/federation.py [--seconds 10] [--subjects 50] [--db sqlite|postgres] [--redis]

The hub side is the whole callback a browser makes after signing in at Okta: ``GET /w/{ws}/sso/{c}/callback``
through the real Flask app — the one-time state consumed, the browser binding checked, the code redeemed at the
IdP's token endpoint (an in-process IdP behind a ``requests`` transport adapter, so no socket time is counted),
the ID token validated (alg allowlist, JWKS key, iss/aud/exp/iat/nonce), claims mapped, the identity link found,
groups synchronised, the policy engine, the session created, the audit events written — and the 302 out. Each
iteration first runs ``/start`` (untimed: it builds the state/nonce/PKCE the callback needs). ``--subjects``
people sign in in turn, so after the first round every callback takes the "existing link" path.

The peer is authlib's raw validation of the same kind of token: ``authlib.jose.jwt.decode`` with the IdP's RSA key
and ``claims.validate()`` (signature, exp, iat) — the irreducible cost of accepting an ID token. It runs half
before and half after the hub, so a load change shows as a spread between its two rates.

Printed: callbacks/s and latency p50/p95/p99, validations/s, and the ratio (time per callback ÷ time per raw
validation).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import requests
from _common import loadavg, pct

from tests.conftest import BASE_CONFIG, Browser, make_settings
from tests.integration.test_federation_callback import A, HostileIdP, conn
from tests.interop.oidc_upstream.peer import make_fed_app, navigate_target


def build_app(args, idp: HostileIdP):
    http = requests.Session()
    http.mount(A, idp)
    cfg = copy.deepcopy(BASE_CONFIG)
    cfg["workspaces"][0]["connections"] = [conn("a", A, "client-a", domains=["a-corp.test"])]
    kw = {}
    cleanup = None
    if args.db == "postgres":
        from tests.services import drop_postgres, postgres_url

        url = postgres_url()
        kw["database_url"] = url
        cleanup = (drop_postgres, url)
    if args.redis:
        from tests.services import redis_url

        kw["redis_url"] = redis_url()[0]
    settings = make_settings(Path(tempfile.mkdtemp(prefix="idhub-bench-fed-")), **kw)
    return make_fed_app(settings, cfg, http=http), cleanup


def hub_round(app, idp: HostileIdP, sub: str, n: int = 0) -> float:
    b = Browser(app, ip=f"10.{n // 62500 % 250}.{n // 250 % 250}.{n % 250 + 1}")  # under the per-address start limit
    r = b.get("/w/acme/sso/a/start")
    q = {k: v[0] for k, v in parse_qs(urlsplit(navigate_target(r.get_data(as_text=True))).query).items()}
    code = idp.issue_code(idp.sign(idp.claims(q["nonce"], sub=sub, email=f"{sub}@a-corp.test")))
    url = "/w/acme/sso/a/callback?" + urlencode({"code": code, "state": q["state"], "iss": A})
    t0 = time.perf_counter()
    r = b.get(url)
    dt = time.perf_counter() - t0
    if r.status_code != 302 or not r.headers["Location"].endswith("/settings/security"):
        raise SystemExit(f"callback failed: {r.status_code} {r.get_data(as_text=True)[:300]}")
    return dt


def peer_round(idp: HostileIdP, tokens: list[str], seconds: float) -> list[float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from authlib.jose import JsonWebKey, jwt
    key = JsonWebKey.import_key(idp.key.as_dict(private=False))
    out: list[float] = []
    end = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < end:
        token = tokens[i % len(tokens)]
        t0 = time.perf_counter()
        claims = jwt.decode(token, key)
        claims.validate()
        out.append(time.perf_counter() - t0)
        i += 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--subjects", type=int, default=50)
    ap.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    ap.add_argument("--redis", action="store_true")
    args = ap.parse_args()

    idp = HostileIdP(A, "client-a")
    app, cleanup = build_app(args, idp)
    tokens = [idp.sign(idp.claims(f"n{i}", sub=f"user{i}")) for i in range(64)]
    try:
        print(f"load before: {loadavg()}   db={args.db} redis={args.redis} subjects={args.subjects}")
        for i in range(min(args.subjects, 50)):  # warm-up: first sign-ins create the accounts (untimed)
            hub_round(app, idp, f"user{i % args.subjects}", i)
        peer1 = peer_round(idp, tokens, args.seconds / 2)
        hub: list[float] = []
        end = time.perf_counter() + args.seconds
        i = 0
        while time.perf_counter() < end:
            hub.append(hub_round(app, idp, f"user{i % args.subjects}", 1000 + i))
            i += 1
        peer2 = peer_round(idp, tokens, args.seconds / 2)
    finally:
        if cleanup:
            app.extensions["idhub"].engine.dispose()
            cleanup[0](cleanup[1])
    peer = peer1 + peer2
    rate = lambda xs: len(xs) / sum(xs)  # noqa: E731
    print(f"load after:  {loadavg()}")
    print(f"{'':34} {'ops/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
    for name, xs in (("idhub OIDC callback (complete)", hub), ("authlib jwt.decode+validate", peer)):
        print(f"{name:34} {rate(xs):9.1f} {pct(xs, 50) * 1e3:8.2f} {pct(xs, 95) * 1e3:8.2f} {pct(xs, 99) * 1e3:8.2f}")
    print(f"peer spread (before → after): {rate(peer1):.1f}/s → {rate(peer2):.1f}/s")
    ratio = statistics.mean(hub) / statistics.mean(peer)
    print(f"ratio (time per callback ÷ time per raw validation): {ratio:.1f}")


if __name__ == "__main__":
    main()
