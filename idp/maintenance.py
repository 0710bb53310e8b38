"""Periodic housekeeping: what nobody should have to remember to run.

``run(hub)`` does each job in turn and returns what each did; a job that fails is logged and reported, and the
others still run. ``idhub maintenance`` runs it once (for cron); ``idhub serve`` runs that command every
``IDHUB_MAINTENANCE_INTERVAL`` seconds (default an hour) from gunicorn's master process, in a child process of
its own so that no database connection is ever shared with the workers it forks. Every job is idempotent and safe
to run on several nodes at once (the audit prune takes the chain head's row lock; the rest delete expired rows).

Jobs:
- ``stores``: expired sessions, one-time values, throttles and login flows in the SQL stores (Redis expires its
  keys itself);
- ``audit_seal``: seals audit events a process appended but did not seal (it died, or stopped), then writes a
  signed checkpoint of every chain to the log (``audit.checkpoint`` lines: keep them outside the database, they
  are what ``idhub audit verify --checkpoint`` checks a chain against);
- ``audit``: events past each workspace's retention (by plan), and the hub chain's, keeping the chains verifiable;
- ``oidc``: expired authorization codes and tokens, retired signing keys past their overlap;
- ``saml_metadata``: SPs registered by ``metadata_url`` whose metadata is older than a day.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import select

log = logging.getLogger("idhub.maintenance")


def _stores(hub) -> int:
    from idp.storage.factory import purge_expired

    return purge_expired(hub.stores)


def _audit(hub) -> int:
    from idp.audit import RETENTION_DAYS
    from idp.models import Workspace

    with hub.db() as db:
        workspaces = [(ws.id, ws.plan) for ws in db.scalars(select(Workspace))]
    now = datetime.now(UTC)
    total = hub.audit.prune(None, max(RETENTION_DAYS.values()), now)  # the hub chain: the longest retention
    for ws_id, plan in workspaces:
        total += hub.audit.prune(ws_id, RETENTION_DAYS.get(plan, 30), now)
    return total


def _audit_seal(hub) -> int:
    from idp.audit import HUB_CHAIN, AuditChainHead
    from idp.models import Workspace

    hub.audit.seal()
    with hub.db() as db:
        slugs = {ws.id: ws.slug for ws in db.scalars(select(Workspace))}
        chains = list(db.scalars(select(AuditChainHead.chain)))
    for chain in chains:
        ws_id = None if chain == HUB_CHAIN else chain
        if ws_id is not None and ws_id not in slugs:
            continue
        log.info("audit.checkpoint", extra={"checkpoint": hub.audit.checkpoint(ws_id, slugs.get(ws_id))})
    return len(chains)


def _oidc(hub) -> int:
    from oidc import install

    svc = getattr(hub, "oidc", None) or install(hub)
    return sum(svc.purge().values())


def _saml_metadata(hub) -> int:
    from idp.models import Workspace
    from saml.config import refresh_metadata

    done = 0
    with hub.db() as db:
        for ws in list(db.scalars(select(Workspace))):
            done += len(refresh_metadata(db, ws, audit=hub.audit))
    if done:
        from idp.invalidation import SAML_APPS

        hub.changed(SAML_APPS)  # every node uses the new metadata at once
    return done


JOBS: dict[str, Callable] = {"stores": _stores, "audit_seal": _audit_seal, "audit": _audit, "oidc": _oidc,
                             "saml_metadata": _saml_metadata}


def run(hub, jobs: dict[str, Callable] | None = None) -> dict[str, int | str]:
    """Run every job; a job's entry is what it removed or refreshed, or ``"failed: <error type>"``."""
    out: dict[str, int | str] = {}
    for name, job in (jobs or JOBS).items():
        try:
            out[name] = job(hub)
        except Exception as exc:  # one failing job (a store down, a bad metadata URL) must not stop the others
            log.exception("maintenance job failed", extra={"job": name})
            out[name] = f"failed: {type(exc).__name__}"
    log.info("maintenance", extra={"result": out})
    return out
