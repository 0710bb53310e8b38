"""The token endpoint's audit group commit: events that arrive while an append is in flight are appended
together by the next one; each caller returns only after its own event is committed; a failure reaches every
caller of the failed batch. Also against the real audit log (hash chain intact)."""

from __future__ import annotations

import threading
from contextlib import contextmanager

import pytest

from oidc.auditbatch import AuditBatcher


class FakeAudit:
    def __init__(self):
        self.batches: list[list[str]] = []
        self._local = threading.local()
        self.first_started = threading.Event()
        self.release_first = threading.Event()
        self.fail = False

    @contextmanager
    def deferred(self):
        self._local.batch = []
        first = not self.batches and not self.first_started.is_set()
        if first:
            self.first_started.set()
            self.release_first.wait(10)  # hold the first append "in flight" until the others queued up
        yield
        if self.fail:
            raise RuntimeError("database down")
        self.batches.append(self._local.batch)

    def record(self, type_, **kw):
        self._local.batch.append(kw["data"]["n"])


def test_waiting_events_are_committed_together():
    audit = FakeAudit()
    b = AuditBatcher(audit)
    done: list[int] = []
    first = threading.Thread(target=lambda: (b.record("t", data={"n": 0}), done.append(0)))
    first.start()
    assert audit.first_started.wait(10)
    others = [threading.Thread(target=lambda i=i: (b.record("t", data={"n": i}), done.append(i))) for i in range(1, 9)]
    for t in others:
        t.start()
    # none of them returns before its event is written
    while len(b._pending) < 8:
        threading.Event().wait(0.001)
    assert done == []
    audit.release_first.set()
    for t in [first, *others]:
        t.join(10)
    assert sorted(done) == list(range(9))
    assert audit.batches[0] == [0]
    assert sorted(audit.batches[1]) == list(range(1, 9))  # one append for the eight that waited


def test_a_failed_append_reaches_its_callers():
    audit = FakeAudit()
    audit.release_first.set()
    audit.fail = True
    b = AuditBatcher(audit)
    with pytest.raises(RuntimeError):
        b.record("t", data={"n": 1})
    audit.fail = False
    b.record("t", data={"n": 2})  # and the next one works
    assert audit.batches == [[2]]


def test_real_audit_log_chain_stays_intact(hub):
    b = AuditBatcher(hub.audit)
    ws_id = None
    threads = [threading.Thread(target=lambda i=i: b.record("oidc.token.issued", workspace_id=ws_id,
                                                            data={"n": i})) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert hub.audit.verify().ok
    from sqlalchemy import func, select

    from idp.audit import AuditEvent

    with hub.db() as db:
        assert db.scalar(select(func.count()).select_from(AuditEvent).where(
            AuditEvent.type == "oidc.token.issued")) == 20
