"""The audit log as admins read it: the filters of the console's audit page, the admin API and the exports, and
each event presented through the event catalog (``idp.eventcatalog``): its description, kind and outcome, who
did it (by e-mail, also when the event recorded only an id) and to what, the app involved, readable details.
Plain Python: takes an ORM session and a workspace. The log itself (writing, chaining) is ``idp.audit``'s.

The console's page, its CSV/JSON exports and the API's search and export all use ``query`` and ``present``, so
a filter means the same everywhere and an export carries what the page shows."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, false, func, or_, select
from sqlalchemy.orm import Session

from idp.audit import AuditEvent, chain_for, csv_chunks, iso_utc, json_chunks
from idp.eventcatalog import (
    APP,
    EXPORT_COLUMNS,
    KINDS,
    OUTCOMES,
    USER,
    data_outcome_rules,
    lookup,
    outcome_of,
    readable_details,
    types_of_kind,
    types_with_outcome,
)
from idp.models import User

ID_RE = re.compile(r"^[0-9a-f-]{36}$")
TYPE_FILTER_RE = re.compile(r"^[a-z0-9_.]+\*?$")
DECISION = "policy.decision"
BATCH = 500


class FilterError(ValueError):
    def __init__(self, field_name: str, message: str):
        super().__init__(message)
        self.field = field_name
        self.message = message


@dataclass
class Filters:
    """What to show. ``user``: a user's id, or (part of) an e-mail — events they did or that were done to them;
    ``actor``: who did it (e-mail or id, exactly); ``app``: an app's slug; ``kinds``/``outcome``: the catalog's;
    ``decisions``: include ``policy.decision`` events (one per policy check, they crowd out everything else)."""

    type: str | None = None
    types: list[str] = field(default_factory=list)  # any of these exact types (the command line's --type)
    actor: str | None = None
    user: str | None = None
    app: str | None = None
    kinds: list[str] = field(default_factory=list)
    outcome: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    decisions: bool = True

    def check(self) -> Filters:
        if self.type is not None and (not isinstance(self.type, str) or len(self.type) > 64
                                      or not TYPE_FILTER_RE.match(self.type)):
            raise FilterError("type", "type is an event type such as auth.signin.failure, or a prefix ending in *")
        for name in ("actor", "user"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or len(value) > 320):
                raise FilterError(name, f"{name} is too long")
        if self.app is not None and (not isinstance(self.app, str) or len(self.app) > 1024):
            raise FilterError("app", "app is an app's slug")
        for k in self.kinds:
            if k not in KINDS:
                raise FilterError("kind", "kind is one of " + ", ".join(KINDS))
        if self.outcome is not None and self.outcome not in OUTCOMES:
            raise FilterError("outcome", "outcome is one of " + ", ".join(OUTCOMES))
        return self


# ---- apps of a workspace, by every name the log uses for them ----------------------------------------------------
@dataclass(frozen=True)
class AppRef:
    slug: str
    name: str
    keys: tuple[str, ...]  # slug, OIDC client id, SAML entity id


def workspace_apps(db: Session, ws_id: str) -> list[AppRef]:
    from oidc.models import OidcClient
    from saml.models import SamlServiceProvider

    out = []
    for slug, name, client_id in db.execute(select(OidcClient.slug, OidcClient.name, OidcClient.client_id)
                                            .where(OidcClient.workspace_id == ws_id)):
        out.append(AppRef(slug or client_id, name or slug or client_id, tuple({slug or client_id, client_id})))
    for slug, name, entity_id in db.execute(select(SamlServiceProvider.slug, SamlServiceProvider.name,
                                                   SamlServiceProvider.entity_id)
                                            .where(SamlServiceProvider.workspace_id == ws_id)):
        out.append(AppRef(slug or entity_id, name or slug or entity_id, tuple({slug or entity_id, entity_id})))
    return sorted(out, key=lambda a: a.name.casefold())


# ---- the query -----------------------------------------------------------------------------------------------------
def query(db: Session, ws_id: str, f: Filters):
    """The SELECT of ``ws_id``'s events matching ``f`` (unordered)."""
    stmt = select(AuditEvent).where(AuditEvent.chain == chain_for(ws_id))
    if f.type:
        if f.type.endswith("*"):
            stmt = stmt.where(AuditEvent.type.startswith(f.type[:-1], autoescape=True))
        else:
            stmt = stmt.where(AuditEvent.type == f.type)
    if f.types:
        stmt = stmt.where(AuditEvent.type.in_(list(f.types)))
    if not f.decisions and f.type != DECISION:
        stmt = stmt.where(AuditEvent.type != DECISION)
    if f.actor:
        stmt = stmt.where(or_(AuditEvent.actor_email == f.actor.strip().casefold(), AuditEvent.actor_email == f.actor,
                              AuditEvent.actor_id == f.actor))
    if f.user:
        stmt = stmt.where(_user_clause(db, ws_id, f.user.strip()))
    if f.app:
        stmt = stmt.where(_app_clause(db, ws_id, f.app.strip()))
    if f.kinds:
        stmt = stmt.where(AuditEvent.type.in_(types_of_kind(f.kinds)))
    if f.outcome:
        stmt = stmt.where(_outcome_clause(f.outcome))
    if f.since is not None:
        stmt = stmt.where(AuditEvent.occurred_at >= f.since)
    if f.until is not None:
        stmt = stmt.where(AuditEvent.occurred_at < f.until)
    return stmt


def _user_clause(db: Session, ws_id: str, value: str):
    """Events the user did or that were done to them: by id, or by (part of) their e-mail."""
    if ID_RE.match(value):
        return or_(AuditEvent.actor_id == value, AuditEvent.subject_id == value)
    needle = value.casefold()
    ids = list(db.scalars(select(User.id).where(User.workspace_id == ws_id,
                                                User.email_normalized.contains(needle, autoescape=True))
                          .limit(200)))
    clauses = [func.lower(AuditEvent.actor_email).contains(needle, autoescape=True)]
    if ids:
        clauses += [AuditEvent.actor_id.in_(ids), AuditEvent.subject_id.in_(ids)]
    return or_(*clauses)


def _app_clause(db: Session, ws_id: str, value: str):
    """Events about an app (by slug, client id or entity id): its sign-ons, tokens, policy decisions, changes."""
    ref = next((a for a in workspace_apps(db, ws_id) if value in a.keys), None)
    keys = list(ref.keys) if ref else [value]
    slug = ref.slug if ref else value
    data = AuditEvent.data
    return or_(and_(AuditEvent.type.startswith("admin.app."), AuditEvent.subject_id == slug),
               data["client"].as_string().in_(keys), data["sp"].as_string().in_(keys),
               data["app"].as_string().in_(keys))


def _outcome_clause(outcome: str):
    clauses = [AuditEvent.type.in_(types_with_outcome(outcome))]
    for type_, key, values in data_outcome_rules(outcome):
        flags = [v for v in values if isinstance(v, bool)]
        texts = [v for v in values if isinstance(v, str) and v not in ("true", "false")]
        value_clauses = []
        if texts:
            value_clauses.append(AuditEvent.data[key].as_string().in_(texts))
        for flag in flags:
            value_clauses.append(AuditEvent.data[key].as_boolean() == flag)
        clauses.append(and_(AuditEvent.type == type_, or_(*value_clauses) if value_clauses else false()))
    return or_(*clauses)


# ---- presenting ----------------------------------------------------------------------------------------------------
class Presenter:
    """Turns events into rows, looking up the users and apps they name (once per batch)."""

    def __init__(self, db: Session, ws_id: str):
        self.db = db
        self.ws_id = ws_id
        self._apps: dict[str, AppRef] | None = None

    def apps(self) -> dict[str, AppRef]:
        if self._apps is None:
            self._apps = {k: a for a in workspace_apps(self.db, self.ws_id) for k in a.keys}
        return self._apps

    def rows(self, events: list[AuditEvent]) -> list[dict[str, Any]]:
        ids = {i for e in events for i in (e.actor_id, e.subject_id) if i and ID_RE.match(i)}
        emails = {uid: email for uid, email in self.db.execute(
            select(User.id, User.email).where(User.workspace_id == self.ws_id, User.id.in_(ids)))} if ids else {}
        return [self.row(e, emails) for e in events]

    def row(self, e: AuditEvent, emails: dict[str, str]) -> dict[str, Any]:
        ev = lookup(e.type)
        data = e.data if isinstance(e.data, dict) else {}
        actor_email = e.actor_email or emails.get(e.actor_id or "")
        target_type = ev.target if e.subject_id else None
        if e.subject_id and target_type is None and e.subject_id in emails:
            target_type = USER
        target = None
        if target_type == USER:
            target = emails.get(e.subject_id or "") or e.subject_id
        elif target_type == APP:
            ref = self.apps().get(e.subject_id or "")
            target = ref.name if ref else e.subject_id
        elif e.subject_id:
            target = data.get("name") if isinstance(data.get("name"), str) else e.subject_id
        app = next((data[k] for k in ("client", "sp", "app") if isinstance(data.get(k), str) and data[k]), None)
        if app is None and target_type == APP:
            app = e.subject_id
        app_ref = self.apps().get(app or "")
        details = readable_details(data)
        return {
            "seq": e.seq,
            "occurred_at": iso_utc(e.occurred_at),
            "when": _when(e.occurred_at),
            "type": e.type,
            "description": ev.description,
            "kind": ev.kind,
            "kind_label": KINDS.get(ev.kind, ev.kind),
            "outcome": outcome_of(e.type, data),
            "actor_id": e.actor_id,
            "actor_email": actor_email,
            "actor_is_user": bool(e.actor_id and e.actor_id in emails),
            "target_type": target_type,
            "target_id": e.subject_id,
            "target": target,
            "target_is_user": target_type == USER and (e.subject_id or "") in emails,
            "app": app,
            "app_slug": app_ref.slug if app_ref else None,
            "app_name": app_ref.name if app_ref else app,
            "ip": e.ip,
            "user_agent": e.user_agent,
            "request_id": e.request_id,
            "details": details,
            "data": data,
            "workspace_id": e.workspace_id,
            "prev_hash": e.prev_hash,
            "hash": e.hash,
        }


def _when(t: datetime) -> str:
    """A time as people read it, in UTC: ``7 Dec 2026, 16:28:35``."""
    t = t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
    return f"{t.day} {t:%b %Y, %H:%M:%S}"


def page(db: Session, ws_id: str, f: Filters, *, limit: int, before: int | None) -> dict[str, Any]:
    """Newest first, ``limit`` events older than ``before`` (a ``seq``); ``next_before`` pages back."""
    stmt = query(db, ws_id, f)
    if before is not None:
        stmt = stmt.where(AuditEvent.seq < before)
    rows = list(db.scalars(stmt.order_by(AuditEvent.seq.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    items = Presenter(db, ws_id).rows(rows)
    return {"items": items, "next_before": rows[-1].seq if more and rows else None}


# ---- exports -------------------------------------------------------------------------------------------------------
def export_row(row: dict[str, Any]) -> dict[str, Any]:
    out = {name: row.get(name) for name in EXPORT_COLUMNS}
    out["details"] = "; ".join(f"{k}: {v}" for k, v in row["details"])
    out["subject_id"] = row["target_id"]
    return out


def export(sessionmaker, ws_id: str, f: Filters, fmt: str) -> Iterator[str]:
    """The matching events, oldest first, as a JSON array or CSV with ``EXPORT_COLUMNS`` (streamed)."""
    if fmt not in ("json", "csv"):
        raise FilterError("format", "format must be csv or json")

    def batches() -> Iterator[list[dict[str, Any]]]:
        with sessionmaker() as db:
            presenter = Presenter(db, ws_id)
            stmt = query(db, ws_id, f).order_by(AuditEvent.seq).execution_options(yield_per=BATCH)
            for part in db.scalars(stmt).partitions(BATCH):
                yield [export_row(r) for r in presenter.rows(list(part))]

    return json_chunks(batches(), sort_keys=False) if fmt == "json" else csv_chunks(batches(), EXPORT_COLUMNS)

