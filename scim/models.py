"""SCIM tables: per-workspace bearer tokens (hashed) and the filter index of users' SCIM attributes."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from idp.db import Base
from idp.models import Group, User, UTCDateTime, new_id, utcnow

# externalId filters (Azure AD looks users and groups up by it) are served by an index, like userName's unique one.
Index("ix_users_workspace_external_id", User.workspace_id, User.external_id)
Index("ix_groups_workspace_external_id", Group.workspace_id, Group.external_id)


class ScimToken(Base):
    """A provisioning client's bearer token. Only its SHA-256 is stored; revoked tokens are kept (audit)."""

    __tablename__ = "scim_tokens"
    __table_args__ = (UniqueConstraint("workspace_id", "name", name="uq_scim_tokens_workspace_name"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    read_only: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class ScimValue(Base):
    """One sub-attribute of one element of a user's SCIM attribute (``emails``/2/``value``), so that filters on
    attributes kept in ``User.scim`` (JSON) are portable SQL: rewritten whenever the user changes."""

    __tablename__ = "scim_values"
    __table_args__ = (Index("ix_scim_values_lookup", "attr", "sub", "folded"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    attr: Mapped[str] = mapped_column(String(200))  # "emails", "title", "urn:…:enterprise:2.0:User:manager"
    idx: Mapped[int] = mapped_column(Integer, default=0)  # element of a multi-valued attribute
    sub: Mapped[str] = mapped_column(String(64), default="")  # "" for a simple attribute
    value: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    folded: Mapped[str | None] = mapped_column(String(1024), nullable=True)  # NFKC + casefold
