"""Group commit for the audit events of the token endpoint.

Every grant is audited, and an audit event is a hash-chained row: appending one takes the workspace chain's head
row lock and a commit (a WAL flush) — so one event per token request caps a workspace at one token per flush,
whatever the number of workers. Here the requests of one process that arrive while an append is in flight are
appended together by the next one (one transaction, one flush, the chain order kept). ``record`` returns only
once its event is committed: nothing is acknowledged before it is in the audit log, nothing can be lost.
"""

from __future__ import annotations

import threading


class _Item:
    __slots__ = ("type", "kw", "done", "error")

    def __init__(self, type_: str, kw: dict):
        self.type, self.kw, self.done, self.error = type_, kw, False, None


class AuditBatcher:
    def __init__(self, audit):
        self.audit = audit  # idp.audit.AuditLog: record() and deferred()
        self._cond = threading.Condition()
        self._pending: list[_Item] = []
        self._writing = False

    def record(self, type_: str, **kw) -> None:
        """Append one event (``AuditLog.record``'s arguments); returns when it is committed, raises if not."""
        item = _Item(type_, kw)
        cond = self._cond
        with cond:
            self._pending.append(item)
            while not item.done:
                if self._writing:  # another thread is appending: ours goes in the next batch (or is in this one)
                    cond.wait()
                    continue
                self._writing = True
                batch, self._pending = self._pending, []
                cond.release()
                error = None
                try:
                    with self.audit.deferred():  # one transaction for the whole batch
                        for it in batch:
                            self.audit.record(it.type, **it.kw)
                except Exception as exc:  # every waiter of this batch learns it failed
                    error = exc
                finally:
                    cond.acquire()
                    self._writing = False
                    for it in batch:
                        it.done, it.error = True, error
                    cond.notify_all()
        if item.error is not None:
            raise item.error
