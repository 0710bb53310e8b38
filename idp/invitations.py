"""Invitations: how a person an admin added gets into idhub. Plain Python (``hub.invitations``).

An admin adds a user without a password (console or admin API): the user is *invited*. They get a mail of their
own ("You're invited to <workspace>", naming who invited them) with a link that works once and for 7 days
(``INVITE_TTL``). Only the SHA-256 of the link's 256-bit secret is stored (``idp.models.Invitation``). The admin can
resend it (a new link; the old one stops working) or revoke it (the link stops working). Opening the link, the
person chooses a password — through ``idp.lifecycle`` like every account write, which also records the completed
mail round trip (``idp.emailverify.MAIL``: the address is verified) — and the sign-in core (``idp.signin``) takes
them on: two-factor set-up where the workspace or their role requires it, then the launcher, signed in.

Until they accept, "Forgot password?" sends them nothing (``blocks_reset``): a revoked invitation must not be
walked around with a reset link, and a reset link is not how a new hire should arrive; the admin resends the
invitation instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update

from idp import emailverify
from idp.accounts import ADMIN_ROLES
from idp.lifecycle import Actor
from idp.models import Invitation, PasswordResetToken, User
from idp.sessions import new_secret_token, token_hash

INVITE_TTL = timedelta(days=7)
INVALID = ("This invitation link is invalid, was replaced by a newer one, or has expired. Ask your IT team to send "
           "a new one.")
SENDS_PER_HOUR = 10  # invitations (and resends) mailed to one user in an hour


@dataclass(frozen=True)
class Sent:
    """An invitation was issued: ``mailed`` says whether the mail went out; ``expires_at`` when the link dies."""

    mailed: bool
    expires_at: datetime


def status_of(row: Invitation | None, now: datetime) -> str | None:
    """``pending`` (the link works), ``expired``, ``revoked``, ``accepted``, or None (never invited)."""
    if row is None:
        return None
    if row.accepted_at is not None:
        return "accepted"
    if row.revoked_at is not None:
        return "revoked"
    return "pending" if row.expires_at > now else "expired"


def needs_second_factor(ws, role: str) -> bool:
    """Whether the person sets up 2FA while activating (the workspace requires it, or they are an admin and the
    workspace keeps ``require_mfa_for_admins``): what the policy engine will ask, said in the mail beforehand."""
    pol = ws.policies or {}
    return bool(pol.get("require_mfa")) or (role in ADMIN_ROLES and (role == "operator" or
                                                                    pol.get("require_mfa_for_admins", True)))


class Invitations:
    def __init__(self, hub):
        self.hub = hub

    # ---- reading -------------------------------------------------------------------------------------------
    @staticmethod
    def latest(db, user_ids: list[str]) -> dict[str, Invitation]:
        """Each user's most recent invitation (one query)."""
        out: dict[str, Invitation] = {}
        if user_ids:
            rows = db.scalars(select(Invitation).where(Invitation.user_id.in_(user_ids))
                              .order_by(Invitation.created_at, Invitation.id))
            for row in rows:
                out[row.user_id] = row
        return out

    def view(self, row: Invitation | None) -> dict | None:
        """What the console and the API show of a user's invitation (never the link)."""
        if row is None:
            return None
        return {"status": status_of(row, self.hub.clock()), "sent_at": row.created_at, "expires_at": row.expires_at,
                "invited_by": row.invited_by or None, "accepted_at": row.accepted_at, "revoked_at": row.revoked_at}

    def blocks_reset(self, db, user: User) -> bool:
        """An invited person who has not accepted yet: no password-reset mail (see the module's docstring)."""
        if user.password_hash is not None:
            return False
        return db.scalar(select(Invitation.id).where(Invitation.user_id == user.id,
                                                     Invitation.accepted_at.is_(None)).limit(1)) is not None

    def find(self, ws, token: str) -> tuple[Invitation, User] | None:
        """The invitation a link belongs to while it works (no side effects): not expired, resent, revoked or
        accepted, the account active, in this workspace and still without a password."""
        if not token or len(token) > 128:
            return None
        with self.hub.db() as db:
            row = db.scalar(select(Invitation).where(Invitation.token_hash == token_hash(token)))
            if row is None or status_of(row, self.hub.clock()) != "pending" or row.workspace_id != ws.id:
                return None
            user = db.get(User, row.user_id)
            if user is None or user.workspace_id != ws.id or not user.active or user.password_hash is not None:
                return None
            db.expunge_all()
            return row, user

    # ---- writing -------------------------------------------------------------------------------------------
    def issue(self, ws, user: User, *, invited_by: str, invited_by_name: str = "") -> Sent | None:
        """A new link for ``user`` (any older one stops working) and the mail. None when ``user`` was sent
        ``SENDS_PER_HOUR`` invitations in the last hour (nothing changes)."""
        now = self.hub.clock()
        if not self.hub.stores.throttle.hit(f"invite:{user.id}", SENDS_PER_HOUR, 3600, now):
            return None
        token, hashed = new_secret_token()
        expires = now + INVITE_TTL
        with self.hub.db() as db:
            self._end_links(db, user.id, now, "resent")
            db.add(Invitation(workspace_id=ws.id, user_id=user.id, token_hash=hashed, invited_by=invited_by[:320],
                              invited_by_name=(invited_by_name or "")[:200], created_at=now, expires_at=expires))
            db.commit()
        who = invited_by_name or ("" if invited_by.startswith("token:") else invited_by)
        mailed = self.hub._mail(user.email, f"You're invited to {ws.name}", "invite", {
            "workspace_name": ws.name, "user_name": user.name or user.email, "user_email": user.email,
            "inviter": f"{invited_by_name} ({invited_by})" if invited_by_name and "@" in invited_by else who,
            "invite_url": self.hub.url(f"/w/{ws.slug}/invite/{token}"),
            "expires": expires.strftime("%d %b %Y, %H:%M UTC"), "expires_days": INVITE_TTL.days,
            "second_factor": needs_second_factor(ws, user.role),
        }, ws_id=ws.id, user_id=user.id)
        return Sent(mailed, expires)

    def revoke(self, user_id: str) -> bool:
        """End the user's invitation link (and any reset link: neither may let them in now). True when a link
        that still worked was ended."""
        now = self.hub.clock()
        with self.hub.db() as db:
            ended = self._end_links(db, user_id, now, "revoked")
            db.execute(PasswordResetToken.__table__.delete().where(PasswordResetToken.user_id == user_id))
            db.commit()
        return ended > 0

    @staticmethod
    def _end_links(db, user_id: str, now: datetime, reason: str) -> int:
        res = db.execute(update(Invitation).where(Invitation.user_id == user_id, Invitation.accepted_at.is_(None),
                                                  Invitation.revoked_at.is_(None))
                         .values(revoked_at=now, revoked_reason=reason))
        return res.rowcount or 0

    def accept(self, ws, token: str, new: str, confirm: str, client, password_errors) -> tuple[list[str], User | None]:
        """Choose the password with the link: (errors, the user). The link is consumed atomically (of two parallel
        submissions exactly one wins) in the same transaction as the password, which ``idp.lifecycle`` writes
        with the address marked verified (the person read a mail sent to it)."""
        found = self.find(ws, token)
        if found is None:
            return [INVALID], None
        inv, user = found
        errors = password_errors(new, confirm, user.email)
        if errors:
            return errors, user
        now = self.hub.clock()
        with self.hub.db() as db:
            res = db.execute(update(Invitation).where(
                Invitation.token_hash == token_hash(token), Invitation.accepted_at.is_(None),
                Invitation.revoked_at.is_(None), Invitation.expires_at > now).values(accepted_at=now))
            row = db.get(User, user.id)
            if res.rowcount != 1 or row is None or not row.active or row.password_hash is not None:
                db.rollback()
                return [INVALID], None
            self.hub.accounts.write(db, Actor("self", row.email, row.id, client.ip, client.user_agent,
                                              client.request_id), row, password=new,
                                    verified_via=emailverify.MAIL)
            db.commit()
            db.refresh(row)
            db.expunge(row)
        self.hub.audit.record("account.invitation.accepted", workspace_id=ws.id, actor_id=row.id,
                              actor_email=row.email, subject_id=row.id, ip=client.ip,
                              user_agent=(client.user_agent or "")[:512] or None, request_id=client.request_id,
                              data={"invitation": inv.id, "invited_by": inv.invited_by, "email_verified": True})
        return [], row
