"""Audit events streamed to a SIEM: a signed HTTPS webhook and JSON lines for log shippers. Plain Python.

Delivery is at-least-once and in order per workspace. Each sink keeps a durable cursor per audit chain
(``audit_stream_cursors``: the last sequence number the sink acknowledged). A pass reads the chain's *sealed*
events after the cursor (``idp.audit.read_sealed``: sealed events form a gap-free prefix, so none is ever
skipped), hands them to the sink and advances the cursor only once the sink has them (a 2xx answer, or a line
written and fsynced). A SIEM that is down is retried with a capped back-off and gets everything once it is back;
a streamer that dies resumes from the cursor, so at worst a batch is delivered twice (each event carries a stable
``event_id`` to de-duplicate on).

In a fleet every node may run the streamer: a pass locks the cursor row it works on (``FOR UPDATE SKIP LOCKED``
on PostgreSQL), so one node delivers a given chain at a time and the order holds. The webhook's cursors are shared
by the fleet (each event is sent once, whichever node sends it); the JSON-lines sink's cursors are per node
(``file:<node>``), since each node writes its own file or stdout.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import requests
from sqlalchemy import BigInteger, String, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column, sessionmaker

from idp.db import Base
from idp.models import UTCDateTime

log = logging.getLogger("idhub.audit.stream")

SIGNATURE_HEADER = "X-Idhub-Signature"
DELIVERY_HEADER = "X-Idhub-Delivery"
BATCH = 500
MAX_BACKOFF = 30.0


class StreamCursor(Base):
    """How far a sink got in one audit chain."""

    __tablename__ = "audit_stream_cursors"
    sink: Mapped[str] = mapped_column(String(200), primary_key=True)
    chain: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class DeliveryFailed(RuntimeError):
    """The sink did not take the batch; the cursor stays where it was."""


class Sink(Protocol):
    name: str

    def deliver(self, batch: dict[str, Any]) -> None: ...


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header's value: ``t=<unix time>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify_signature(secret: str, header: str, body: bytes, now: float | None = None, tolerance: int = 300) -> bool:
    """What a receiver runs (documented in docs/events.md): the signature matches and is at most ``tolerance``
    seconds old."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        t = int(parts["t"])
        given = parts["v1"]
    except (ValueError, KeyError):
        return False
    if abs((time.time() if now is None else now) - t) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, t, body).split("v1=", 1)[1], given)


@dataclass
class WebhookSink:
    """POSTs each batch as JSON, signed with the shared secret; any 2xx is an acknowledgement."""

    url: str
    secret: str
    timeout: float = 10.0
    session: requests.Session = field(default_factory=requests.Session)

    @property
    def name(self) -> str:
        return "webhook:" + hashlib.sha256(self.url.encode()).hexdigest()[:16]

    @property
    def shared(self) -> bool:
        return True

    def deliver(self, batch: dict[str, Any]) -> None:
        body = json.dumps(batch, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self.secret, int(time.time()), body),
            DELIVERY_HEADER: batch["delivery_id"],
            "User-Agent": "idhub-audit-stream",
        }
        try:
            resp = self.session.post(self.url, data=body, headers=headers, timeout=self.timeout,
                                     allow_redirects=False)
        except requests.RequestException as exc:
            raise DeliveryFailed(f"{type(exc).__name__}") from None
        if not 200 <= resp.status_code < 300:
            raise DeliveryFailed(f"HTTP {resp.status_code}")


@dataclass
class JsonLinesSink:
    """One JSON object per line (each event, then the checkpoint if any) to a file or stdout (``-``)."""

    path: str
    node: str = field(default_factory=socket.gethostname)

    @property
    def name(self) -> str:
        return f"file:{self.node}"

    @property
    def shared(self) -> bool:
        return False

    def deliver(self, batch: dict[str, Any]) -> None:
        lines = [json.dumps(ev, ensure_ascii=False, sort_keys=True) for ev in batch["events"]]
        if batch.get("checkpoint"):
            lines.append(json.dumps({"checkpoint": batch["checkpoint"]}, sort_keys=True))
        data = ("\n".join(lines) + "\n").encode()
        try:
            if self.path == "-":
                fd = 1
                os.write(fd, data)
                return
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise DeliveryFailed(f"{self.path}: {exc.strerror}") from None


def event_json(row: dict[str, Any], workspace: str | None) -> dict[str, Any]:
    """The streamed form of one exported event row: the export's fields, the workspace's short name and a stable
    ``event_id`` (chain and sequence number) to de-duplicate redeliveries on."""
    out = dict(row)
    out["workspace"] = workspace
    out["event_id"] = f"{row.get('workspace_id') or '_hub'}:{row['seq']}"
    return out


@dataclass
class StreamResult:
    delivered: int = 0
    batches: int = 0
    failed: list[str] = field(default_factory=list)


class AuditStreamer:
    """One pass (``run_once``) or a loop (``run``) over every sink and chain.

    ``audit`` is the hub's ``AuditLog``; ``workspaces`` maps a workspace id to its short name (None for the hub's
    own chain) and lists the chains to stream."""

    def __init__(self, sm: sessionmaker, audit, sinks: list, workspaces: Callable[[], dict[str | None, str | None]],
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC), batch: int = BATCH,
                 checkpoint_interval: float = 3600.0) -> None:
        self.sm = sm
        self.audit = audit
        self.sinks = sinks
        self.workspaces = workspaces
        self.clock = clock
        self.batch = batch
        self.checkpoint_interval = checkpoint_interval
        self._failures: dict[str, int] = {}
        self._retry_at: dict[str, float] = {}
        self._last_checkpoint: dict[tuple[str, str | None], float] = {}
        self._known: set[tuple[str, str]] = set()

    def run_once(self, now: float | None = None) -> StreamResult:
        now = time.monotonic() if now is None else now
        result = StreamResult()
        slugs = self.workspaces()
        for sink in self.sinks:
            if self._retry_at.get(sink.name, 0.0) > now:
                continue
            try:
                for ws_id in self._pending(sink.name, slugs, now):
                    while True:
                        n = self._deliver_chain(sink, ws_id, slugs.get(ws_id), now)
                        result.delivered += n
                        if n:
                            result.batches += 1
                        if n < self.batch:
                            break
            except DeliveryFailed as exc:
                failures = self._failures.get(sink.name, 0) + 1
                self._failures[sink.name] = failures
                delay = min(MAX_BACKOFF, 2.0 ** (failures - 1))
                self._retry_at[sink.name] = now + delay
                result.failed.append(sink.name)
                log.warning("audit.stream.failed", extra={"sink": sink.name, "reason": str(exc),
                                                          "failures": failures, "retry_in": delay})
                _metric_failure(sink.name)
                continue
            self._failures.pop(sink.name, None)
            self._retry_at.pop(sink.name, None)
        return result

    def _pending(self, sink: str, slugs: dict[str | None, str | None], now: float) -> list[str | None]:
        """The chains with sealed events past the sink's cursor (one query), and those due a checkpoint."""
        from idp.audit import HUB_CHAIN, AuditChainHead

        with self.sm() as db:
            rows = db.execute(
                select(AuditChainHead.chain, AuditChainHead.seq, StreamCursor.seq)
                .join(StreamCursor, (StreamCursor.chain == AuditChainHead.chain) & (StreamCursor.sink == sink),
                      isouter=True)
            ).all()  # fmt: skip
        out: list[str | None] = []
        for chain, head, cursor in rows:
            ws_id = None if chain == HUB_CHAIN else chain
            if ws_id not in slugs:
                continue
            if (head or 0) > (cursor or 0):
                out.append(ws_id)
            elif head and now - self._last_checkpoint.get((sink, ws_id), -1e18) >= self.checkpoint_interval:
                out.append(ws_id)
        return out

    def _deliver_chain(self, sink, ws_id: str | None, slug: str | None, now: float) -> int:
        from idp.audit import _export_row, chain_for, read_sealed

        chain = chain_for(ws_id)
        self._ensure_cursor(sink.name, chain)
        with self.sm() as db:
            cursor = db.execute(
                select(StreamCursor).where(StreamCursor.sink == sink.name, StreamCursor.chain == chain)
                .with_for_update(skip_locked=True)
            ).scalar_one_or_none()  # fmt: skip
            if cursor is None:
                return 0  # another node is delivering this chain right now
            rows = read_sealed(db, ws_id, cursor.seq, self.batch)
            checkpoint = None
            key = (sink.name, ws_id)
            due = now - self._last_checkpoint.get(key, -1e18) >= self.checkpoint_interval
            if due and (rows or cursor.seq):
                checkpoint = self.audit.checkpoint(ws_id, slug or "_hub")
            if not rows and checkpoint is None:
                db.rollback()
                return 0
            events = [event_json(_export_row(r), slug) for r in rows]
            first = rows[0].seq if rows else cursor.seq
            last = rows[-1].seq if rows else cursor.seq
            batch = {
                "delivery_id": f"{chain}:{first}-{last}:{uuid.uuid4().hex[:8]}",
                "workspace": slug,
                "workspace_id": ws_id,
                "first_seq": first,
                "last_seq": last,
                "events": events,
            }
            if checkpoint is not None:
                batch["checkpoint"] = checkpoint
            sink.deliver(batch)  # raises DeliveryFailed: the transaction rolls back, the cursor stays
            cursor.seq = last
            cursor.delivered_at = self.clock()
            db.commit()
            if checkpoint is not None:
                self._last_checkpoint[key] = now
            _metric_delivered(sink.name, len(events))
            return len(events)

    def _ensure_cursor(self, sink: str, chain: str) -> None:
        if (sink, chain) in self._known:
            return
        with self.sm() as db:
            if db.get(StreamCursor, (sink, chain)) is None:
                db.add(StreamCursor(sink=sink, chain=chain, seq=0))
                try:
                    db.commit()
                except IntegrityError:  # another node made it first
                    db.rollback()
        self._known.add((sink, chain))

    def run(self, stop: threading.Event, idle: float = 1.0) -> None:
        """Pass after pass until ``stop`` is set; sleeps ``idle`` seconds when a pass delivered nothing."""
        while not stop.is_set():
            try:
                result = self.run_once()
            except Exception:  # the database away, say: log and try again, the cursor is durable
                log.exception("audit.stream.error")
                result = StreamResult()
            if not result.delivered:
                stop.wait(idle)

    def lag(self) -> dict[str, int]:
        """Per sink: sealed events not yet delivered (for /metrics and `idhub audit stream --status`)."""
        from idp.audit import AuditChainHead

        out: dict[str, int] = {}
        with self.sm() as db:
            heads = {h.chain: h.seq or 0 for h in db.execute(select(AuditChainHead)).scalars()}
            for sink in self.sinks:
                done = {c.chain: c.seq for c in db.execute(
                    select(StreamCursor).where(StreamCursor.sink == sink.name)).scalars()}
                out[sink.name] = sum(max(0, seq - done.get(chain, 0)) for chain, seq in heads.items())
        return out


def sinks_from_settings(settings) -> list:
    sinks: list = []
    if settings.audit_webhook_url:
        sinks.append(WebhookSink(settings.audit_webhook_url, settings.audit_webhook_secret or ""))
    if settings.audit_stream_file:
        sinks.append(JsonLinesSink(settings.audit_stream_file, node=settings.node_name or socket.gethostname()))
    return sinks


def workspaces_of(sm: sessionmaker) -> Callable[[], dict[str | None, str | None]]:
    """Every workspace's chain and the hub's own, with the workspace's short name."""

    def read() -> dict[str | None, str | None]:
        from idp.models import Workspace

        with sm() as db:
            rows = db.execute(select(Workspace.id, Workspace.slug).order_by(Workspace.slug)).all()
        return {None: None, **{r.id: r.slug for r in rows}}

    return read


def _metric_failure(sink: str) -> None:
    from idp import metrics

    metrics.AUDIT_STREAM_FAILURES.labels(sink.split(":", 1)[0]).inc()


def _metric_delivered(sink: str, n: int) -> None:
    from idp import metrics

    metrics.AUDIT_STREAM_EVENTS.labels(sink.split(":", 1)[0]).inc(n)

