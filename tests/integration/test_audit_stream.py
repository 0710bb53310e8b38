"""Audit events streamed to a SIEM (``idp/auditstream.py``): a signed webhook and JSON lines.

The SIEM is a small HTTP server run by the test (``Siem``); "down" means nothing listens on its port (connection
refused), as when the SIEM's collector is restarting. Every wait is polled with a bound, nothing sleeps for a
fixed time except the minute the SIEM is down."""

from __future__ import annotations

import http.server
import json
import os
import signal
import threading
import time

import pytest
import requests
from sqlalchemy import create_engine, text

from config.settings import SettingsError, load_settings
from idp.auditstream import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    AuditStreamer,
    DeliveryFailed,
    JsonLinesSink,
    WebhookSink,
    sign,
    verify_signature,
    workspaces_of,
)
from tests.helpers.live import LiveHub, free_port
from tests.services import drop_postgres, postgres_url

SECRET = "siem-shared-secret-" + "x" * 24


class Siem:
    """A SIEM's HTTP collector: records every batch POSTed to it; ``start``/``stop`` bring it up and down on one
    port; ``status`` is what it answers."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/collector"
        self.batches: list[dict] = []
        self.bad_signatures = 0
        self.status = 200
        self._server: http.server.ThreadingHTTPServer | None = None
        self._lock = threading.Lock()

    def start(self) -> Siem:
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                ok = verify_signature(SECRET, self.headers.get(SIGNATURE_HEADER, ""), body)
                with outer._lock:
                    if not ok:
                        outer.bad_signatures += 1
                    elif outer.status == 200:
                        batch = json.loads(body)
                        batch["_delivery"] = self.headers.get(DELIVERY_HEADER)
                        outer.batches.append(batch)
                    status = outer.status if ok else 401
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def events(self, workspace: str) -> list[dict]:
        with self._lock:
            return [ev for b in self.batches if b["workspace"] == workspace for ev in b["events"]]


def first_seen_order(events: list[dict]) -> list[int]:
    seen: list[int] = []
    got = set()
    for ev in events:
        if ev["seq"] not in got:
            got.add(ev["seq"])
            seen.append(ev["seq"])
    return seen


# ---- one process, SQLite: the cursor, the signature, failures ----------------------------------------------------
@pytest.fixture
def siem():
    s = Siem().start()
    yield s
    s.stop()


def ws_id_of(hub, slug="acme"):
    from idp.accounts import workspace_by_slug

    with hub.db() as session:
        return workspace_by_slug(session, slug).id


def make_streamer(hub, sinks):
    return AuditStreamer(hub.db, hub.audit, sinks, workspaces_of(hub.db), checkpoint_interval=1e9)


def record(hub, ws_id, n, start=0):
    for i in range(start, start + n):
        hub.audit.record("admin.group.created", workspace_id=ws_id, actor_email="it@acme.test", data={"name": f"g{i}"})


def test_signature_is_checked_by_the_receiver_rule():
    body = b'{"events":[]}'
    header = sign(SECRET, int(time.time()), body)
    assert verify_signature(SECRET, header, body)
    assert not verify_signature(SECRET, header, body + b" ")
    assert not verify_signature("another-secret-" + "y" * 20, header, body)
    assert not verify_signature(SECRET, sign(SECRET, int(time.time()) - 3600, body), body)  # replayed an hour later
    assert not verify_signature(SECRET, "t=abc,v1=00", body)
    assert not verify_signature(SECRET, "", body)


def test_events_reach_the_siem_once_in_order_and_the_cursor_is_durable(hub, siem, tmp_path):
    ws_id = ws_id_of(hub)
    record(hub, ws_id, 7)
    lines = tmp_path / "audit.jsonl"
    sinks = [WebhookSink(siem.url, SECRET), JsonLinesSink(str(lines), node="n1")]
    assert make_streamer(hub, sinks).run_once().failed == []
    got = siem.events("acme")
    assert [e["data"].get("name") for e in got if e["type"] == "admin.group.created"] == [f"g{i}" for i in range(7)]
    assert first_seen_order(got) == sorted(first_seen_order(got))
    assert all(e["event_id"] == f"{ws_id}:{e['seq']}" and e["workspace"] == "acme" for e in got)
    # a new streamer (a restart) resumes after the cursor: nothing is sent twice
    record(hub, ws_id, 2, start=7)
    make_streamer(hub, sinks).run_once()
    names = [e["data"].get("name") for e in siem.events("acme") if e["type"] == "admin.group.created"]
    assert names == [f"g{i}" for i in range(9)]
    file_events = [json.loads(x) for x in lines.read_text().splitlines() if '"checkpoint"' not in x[:15]]
    assert [e["seq"] for e in file_events if e["workspace"] == "acme"] == [e["seq"] for e in siem.events("acme")]


def test_a_failing_siem_keeps_the_cursor_and_gets_the_events_later(hub, siem):
    ws_id = ws_id_of(hub)
    record(hub, ws_id, 3)
    streamer = make_streamer(hub, [WebhookSink(siem.url, SECRET)])
    siem.status = 503
    first = streamer.run_once(now=0.0)
    assert first.failed and first.delivered == 0
    assert streamer.run_once(now=0.5).failed == []  # backing off: no attempt yet
    siem.status = 200
    assert streamer.run_once(now=100.0).delivered >= 3
    assert [e["data"].get("name") for e in siem.events("acme") if e["type"] == "admin.group.created"] == \
        ["g0", "g1", "g2"]


def test_a_siem_that_answers_with_a_redirect_or_an_error_has_not_acknowledged(hub, siem):
    record(hub, ws_id_of(hub), 1)
    for status in (302, 400, 500):
        siem.status = status
        assert make_streamer(hub, [WebhookSink(siem.url, SECRET)]).run_once(now=0.0).failed
    assert siem.events("acme") == []


def test_an_unreachable_siem_raises_delivery_failed_without_the_secret():
    sink = WebhookSink(f"http://127.0.0.1:{free_port()}/x", SECRET, timeout=2)
    with pytest.raises(DeliveryFailed) as exc:
        sink.deliver({"delivery_id": "d", "events": [], "workspace": None})
    assert SECRET not in str(exc.value)


def test_webhook_settings_are_checked_at_start():
    base = {"IDHUB_SECRET_KEY": "k" * 48}
    for url in ("http://siem.example.com/in", "ftp://siem.example.com", "not a url"):
        with pytest.raises(SettingsError, match="IDHUB_AUDIT_WEBHOOK_URL"):
            load_settings({**base, "IDHUB_AUDIT_WEBHOOK_URL": url, "IDHUB_AUDIT_WEBHOOK_SECRET": SECRET})
    with pytest.raises(SettingsError, match="IDHUB_AUDIT_WEBHOOK_SECRET"):
        load_settings({**base, "IDHUB_AUDIT_WEBHOOK_URL": "https://siem.example.com/in"})
    with pytest.raises(SettingsError, match="IDHUB_AUDIT_WEBHOOK_SECRET"):
        load_settings({**base, "IDHUB_AUDIT_WEBHOOK_URL": "https://siem.example.com/in",
                       "IDHUB_AUDIT_WEBHOOK_SECRET": "short"})
    s = load_settings({**base, "IDHUB_AUDIT_WEBHOOK_URL": "https://siem.example.com/in",
                       "IDHUB_AUDIT_WEBHOOK_SECRET": SECRET})
    assert s.audit_webhook_url == "https://siem.example.com/in"


# ---- a real node on PostgreSQL: the SIEM down for a minute, the node killed meanwhile -------------------------------
CONFIG = {"workspaces": [{"slug": "acme", "name": "Acme", "plan": "enterprise",
                          "users": [{"email": "it@acme.test", "password": "S3cure-Example!", "role": "admin"}]}]}


def test_a_siem_down_for_a_minute_receives_every_event_once_back_in_order(tmp_path):
    db = postgres_url()
    siem = Siem()  # down: nothing listens on its port yet
    lines = tmp_path / "audit.jsonl"
    node = LiveHub(CONFIG, database_url=db, workers=2, extra_env={
        "IDHUB_AUDIT_WEBHOOK_URL": siem.url, "IDHUB_AUDIT_WEBHOOK_SECRET": SECRET,
        "IDHUB_AUDIT_STREAM_FILE": str(lines), "IDHUB_NODE_NAME": "node-a"})
    engine = create_engine(db)
    try:
        node.start()
        token = node.run("admin", "token", "create", "--workspace", "acme").stdout.split()[-1]
        api = requests.Session()
        api.headers["Authorization"] = f"Bearer {token}"
        made = 0
        down_until = time.monotonic() + 60
        killed = False
        while time.monotonic() < down_until:
            r = api.post(node.url("/api/v1/workspaces/acme/groups"), json={"name": f"team-{made}"}, timeout=10)
            assert r.status_code == 201, r.text
            made += 1
            if not killed and time.monotonic() > down_until - 30:
                os.killpg(node.proc.pid, signal.SIGKILL)  # the node and its streamer die mid-outage
                node.proc.wait()
                node.proc = None
                node._serve()
                killed = True
            time.sleep(0.25)
        assert killed and made > 50
        siem.start()  # the SIEM is back
        with engine.connect() as conn:
            ws_id = conn.execute(text("SELECT id FROM workspaces WHERE slug = 'acme'")).scalar_one()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                total = conn.execute(text("SELECT count(*) FROM audit_events WHERE chain = :c"), {"c": ws_id}).scalar()
            got = {e["seq"] for e in siem.events("acme")}
            if total and len(got) >= total:
                break
            time.sleep(0.2)
        with engine.connect() as conn:
            seqs = [r[0] for r in conn.execute(text(
                "SELECT seq FROM audit_events WHERE chain = :c ORDER BY seq"), {"c": ws_id})]
        assert None not in seqs, "every event is sealed"
        events = siem.events("acme")
        assert {e["seq"] for e in events} == set(seqs), "every event reached the SIEM"
        assert first_seen_order(events) == seqs, "in order"
        created = [e["data"]["name"] for e in events if e["type"] == "admin.group.created"]
        assert sorted(set(created), key=lambda n: int(n.split("-")[1])) == [f"team-{i}" for i in range(made)]
        assert siem.bad_signatures == 0
        file_seqs = [json.loads(x).get("seq") for x in lines.read_text().splitlines()
                     if json.loads(x).get("workspace") == "acme"]
        assert set(file_seqs) == set(seqs) and first_seen_order([{"seq": s} for s in file_seqs]) == seqs
        assert node.run("audit", "verify", "--workspace", "acme").returncode == 0
    finally:
        siem.stop()
        node.cleanup()
        engine.dispose()
        drop_postgres(db)

