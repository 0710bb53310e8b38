"""Who lost access to which app (``apps[].assigned_groups``), and what then happens: one place for every channel.

An app is open to everyone in its workspace unless it is assigned to groups; then only their members may use it
(``policies.engine.may_use``, the same answer the policy engine's ``app_assignment`` rule gives at every door).
A change of who is in a group (admin API or console, SCIM, the config file) or of an app's groups can take an app
away from people who hold its tokens: each channel wraps its write in ``hub.app_access.watch(...)``, which reads
who may use what before and after, and for every (user, app) that was lost calls the app's protocol's revoker
(OIDC: the user's refresh and access tokens of that client revoked, and the client's back-channel logout for the
user's sessions, which stay signed in to idhub and to the other apps) and records ``app.access.revoked``.

Plain Python: the protocols register how their apps are read (``readers``) and how access is taken back
(``revokers``), as they register their per-app policy look-ups; this module imports none of them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import select

from idp.models import Group, GroupMember, User
from policies.engine import may_use

log = logging.getLogger("idhub.assignments")


@dataclass(frozen=True)
class App:
    protocol: str  # "oidc" | "saml"
    key: str  # the OIDC client_id, the SAML entity ID
    slug: str
    assigned_groups: tuple[str, ...] | None  # None: everyone in the workspace


AppKey = tuple[str, str]  # (protocol, key)


def usable(apps: Iterable[App], groups_of: Mapping[str, Iterable[str]]) -> dict[str, frozenset[AppKey]]:
    """For each user (``groups_of``: user id -> group names), the apps they may use."""
    apps = list(apps)
    return {u: frozenset((a.protocol, a.key) for a in apps if may_use(a.assigned_groups, set(groups)))
            for u, groups in groups_of.items()}


def lost_access(before: Mapping[str, frozenset[AppKey]], after: Mapping[str, frozenset[AppKey]]
                ) -> list[tuple[str, AppKey]]:
    """(user, app) that a user could use before and cannot now; users gone meanwhile are not named (deleting or
    deprovisioning an account ends its sessions and revokes its tokens on its own)."""
    return sorted((u, app) for u, had in before.items() if u in after for app in had - after[u])


class AppAccess:
    def __init__(self, hub):
        self.hub = hub
        # protocol readers: (db, workspace id) -> [App]; revokers by protocol: (ws_id, user_id, App, why) -> None
        self.readers: list[Callable] = []
        self.revokers: dict[str, Callable] = {}

    def snapshot(self, ws_id: str, user_ids: Iterable[str] | None = None) -> dict[str, frozenset[AppKey]]:
        """Who may use which of the workspace's apps now: ``user_ids`` (None: every account of the workspace)."""
        with self.hub.db() as db:
            apps = [a for read in self.readers for a in read(db, ws_id)]
            if user_ids is None:
                users = list(db.scalars(select(User.id).where(User.workspace_id == ws_id)))
            else:
                users = list(dict.fromkeys(user_ids))
            groups_of: dict[str, set[str]] = {u: set() for u in users}
            if users and any(a.assigned_groups is not None for a in apps):
                stmt = (select(GroupMember.user_id, Group.name).join(Group, Group.id == GroupMember.group_id)
                        .where(Group.workspace_id == ws_id))
                if user_ids is not None:
                    stmt = stmt.where(GroupMember.user_id.in_(users))
                for uid, name in db.execute(stmt):
                    if uid in groups_of:
                        groups_of[uid].add(name)
        return usable(apps, groups_of)

    @contextmanager
    def watch(self, ws_id: str, why: str, user_ids: Iterable[str] | None = None, actor_id: str | None = None):
        """Around a write that may take apps away: after it (committed), revoke what was lost. ``user_ids``: the
        accounts the write can affect (the members of a changed group); None: every account of the workspace."""
        ids = None if user_ids is None else list(user_ids)
        before = self.snapshot(ws_id, ids)
        yield
        if not before:
            return
        self.revoke(ws_id, lost_access(before, self.snapshot(ws_id, ids)), why, actor_id)

    def revoke(self, ws_id: str, lost: list[tuple[str, AppKey]], why: str, actor_id: str | None = None) -> None:
        if not lost:
            return
        with self.hub.db() as db:
            apps = {(a.protocol, a.key): a for read in self.readers for a in read(db, ws_id)}
        for user_id, key in lost:
            app = apps.get(key)
            revoker = self.revokers.get(key[0])
            if revoker is not None and app is not None:
                try:
                    revoker(ws_id, user_id, app, why)
                except Exception:  # noqa: BLE001 - the others are still revoked; the failure is logged
                    log.exception("app access revocation failed", extra={"app": key[1]})
            self.hub.audit.record("app.access.revoked", workspace_id=ws_id, actor_id=actor_id, subject_id=user_id,
                                  data={"app": app.slug if app else key[1], "protocol": key[0], "why": why})
