"""Upstream SAML responses validated per second through ``federation.saml_sp.consume`` against python3-saml's raw
``OneLogin_Saml2_Response.is_valid`` on the same responses, same process, same run.

    .venv/bin/python bench/federation_saml.py [--seconds 10] [--responses 400] [--redis] [--attributes 8]

Both sides get the same signed responses (an Okta-shaped assertion, RSA-SHA256, 2048-bit key, signed assertion),
each with its own assertion ID so the replay cache never trips. ``consume`` does everything a sign-in does:
hardened parse, idhub's own structure/signature/URL/time checks, python3-saml strict validation on top, claim
mapping and the replay cache (a dict, or idhub's ``RedisOneTimeStore`` with ``--redis``). The peer is the raw
library call with strict settings (pinned certificate, wantAssertionsSigned, rejectDeprecatedAlgorithm). The peer
runs for half the time before and half after ``consume``, so a load change shows as a spread between its two rates.

Printed: responses/s and latency p50/p95/p99 of each side, and the ratio (time per consume ÷ time per raw
validation). Since consume includes the library's validation, the ratio is at least 1; the part above 1 is the
cost of idhub's own checks.
"""

from __future__ import annotations

import argparse
import base64
import statistics
import time
from urllib.parse import urlsplit

from _common import loadavg, pct
from onelogin.saml2.response import OneLogin_Saml2_Response

from federation import saml_sp
from tests.helpers import saml_builder as sb

BASE, WS, IDP = "https://hub.bench", "bench", "http://www.okta.com/exkbench"
REQ = "ONELOGIN_bench_request"


def make_responses(n: int, n_attrs: int) -> tuple[dict, list[str]]:
    key, cert = sb.keypair("bench-idp")
    conn = {"slug": "okta", "preset": "okta", "protocol": "saml",
            "metadata_xml": sb.metadata(IDP, [cert], "https://idp.bench/sso")}
    attrs = {"email": "ada@acme.test", "firstName": "Ada", "lastName": "Lovelace",
             "groups": [f"group-{i}" for i in range(n_attrs)]}
    out = []
    for _ in range(n):
        resp = sb.response(issuer=IDP, acs=saml_sp.acs_url(conn, BASE, WS),
                           audience=saml_sp.sp_entity_id(conn, BASE, WS), in_response_to=REQ, attributes=attrs,
                           lifetime=3600)
        sb.sign(sb.assertion_of(resp), key, cert)
        out.append(sb.encode(resp))
    return conn, out


def run(fn, items: list[str], seconds: float) -> tuple[int, float, list[float]]:
    lat: list[float] = []
    i = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        fn(items[i % len(items)])
        lat.append(time.perf_counter() - t0)
        i += 1
    return i, time.perf_counter() - start, lat


def show(name: str, n: int, wall: float, lat: list[float]) -> float:
    rate = n / wall
    ms = [x * 1000 for x in lat]
    print(f"{name:<34} {rate:9.1f}/s   p50 {pct(ms, 50):6.2f} ms   p95 {pct(ms, 95):6.2f} ms   "
          f"p99 {pct(ms, 99):6.2f} ms   (n={n})")
    return statistics.fmean(lat)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--responses", type=int, default=400)
    ap.add_argument("--attributes", type=int, default=8, help="groups in each assertion")
    ap.add_argument("--redis", action="store_true", help="replay cache in Redis (db 14), as in production")
    args = ap.parse_args()

    conn, responses = make_responses(args.responses, args.attributes)
    meta = saml_sp.parse_idp_metadata(conn["metadata_xml"])
    settings = saml_sp._settings(conn, BASE, WS, meta, list(meta["certs"]), want_assertions_signed=True)
    parts = urlsplit(saml_sp.acs_url(conn, BASE, WS))
    request_data = {"https": "on", "http_host": parts.netloc, "script_name": parts.path, "get_data": {},
                    "post_data": {}}

    def peer(b64: str) -> None:
        resp = OneLogin_Saml2_Response(settings, b64)
        assert resp.is_valid(request_data, request_id=REQ, raise_exceptions=True)

    if args.redis:
        import redis

        from idp.storage.redis_store import RedisOneTimeStore

        client = redis.Redis.from_url("redis://127.0.0.1:6379/14")
        client.flushdb()
        store = RedisOneTimeStore(client, prefix="bench:")
        counter = iter(range(1 << 60))

        def replay_seen(key: str, ttl: int) -> bool:
            # each response is consumed many times: make the key unique so the cache is exercised, never tripped
            return not store.add(f"{key}:{next(counter)}", "1", ttl)
    else:
        seen: set[str] = set()
        counter = iter(range(1 << 60))

        def replay_seen(key: str, ttl: int) -> bool:
            k = f"{key}:{next(counter)}"
            if k in seen:
                return True
            seen.add(k)
            return False

    def ours(b64: str) -> None:
        saml_sp.consume(conn, BASE, WS, b64, expected_request_id=REQ, replay_seen=replay_seen)

    # warm-up (imports, XSD schema load, lru caches)
    for b in responses[:20]:
        peer(b)
        ours(b)

    print(f"load average before: {loadavg()}   responses: {len(responses)} distinct, "
          f"{len(base64.b64decode(responses[0]))} bytes each, replay cache: {'redis' if args.redis else 'dict'}")
    half = args.seconds / 2
    n1, w1, l1 = run(peer, responses, half)
    n2, w2, l2 = run(ours, responses, args.seconds)
    n3, w3, l3 = run(peer, responses, half)
    print(f"peer rates before/after: {n1 / w1:.1f}/s, {n3 / w3:.1f}/s")
    peer_mean = show("python3-saml is_valid (raw)", n1 + n3, w1 + w3, l1 + l3)
    ours_mean = show("saml_sp.consume (idhub)", n2, w2, l2)
    print(f"ratio (time per consume / time per raw is_valid): {ours_mean / peer_mean:.2f}")
    print(f"load average after: {loadavg()}")


if __name__ == "__main__":
    main()
