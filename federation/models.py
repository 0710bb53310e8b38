"""Tables of upstream connections and the identities they vouch for."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from idp.db import Base
from idp.models import UTCDateTime, new_id, utcnow


class FederationConnection(Base):
    """An upstream IdP of a workspace (config file ``connections``). ``settings`` holds the validated,
    non-secret settings; ``secrets`` the secret ones (client_secret, bind_password), each encrypted with
    SecretBox ``federation-secrets``."""

    __tablename__ = "federation_connections"
    __table_args__ = (UniqueConstraint("workspace_id", "slug", name="uq_federation_connections_ws_slug"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"), index=True)
    slug: Mapped[str] = mapped_column(String(63))
    name: Mapped[str] = mapped_column(String(200))
    protocol: Mapped[str] = mapped_column(String(10))
    preset: Mapped[str] = mapped_column(String(20), default="generic")
    domains: Mapped[list] = mapped_column(JSON, default=list)
    settings: Mapped[dict] = mapped_column(JSON, default=dict)
    secrets: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class FederationLink(Base):
    """``(connection, subject) -> user``: how an upstream identity maps to an idhub account (never by email)."""

    __tablename__ = "federation_links"
    __table_args__ = (UniqueConstraint("connection_id", "subject", name="uq_federation_links_conn_subject"),
                      Index("ix_federation_links_user_id", "user_id"))
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    connection_id: Mapped[str] = mapped_column(ForeignKey("federation_connections.id", ondelete="CASCADE"))
    subject: Mapped[str] = mapped_column(String(512))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_signin_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_claims: Mapped[str] = mapped_column(Text, default="")
