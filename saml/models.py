"""Tables of the SAML identity provider: the workspace's signing key and its service providers."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from idp.db import Base
from idp.models import UTCDateTime, new_id, utcnow


class SamlKey(Base):
    """A workspace's SAML signing key: a self-signed certificate and the PEM private key sealed with
    SecretBox("saml-keys")."""

    __tablename__ = "saml_keys"
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"), primary_key=True)
    certificate: Mapped[str] = mapped_column(Text)
    private_enc: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class SamlServiceProvider(Base):
    """A downstream app (``apps`` entry with ``protocol: saml``). ``acs`` holds the registered HTTP-POST
    AssertionConsumerService endpoints as ``[{"url", "index", "default"}]``: responses go only there."""

    __tablename__ = "saml_service_providers"
    __table_args__ = (UniqueConstraint("workspace_id", "entity_id", name="uq_saml_sp_workspace_entity"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"), index=True)
    entity_id: Mapped[str] = mapped_column(String(1024))
    slug: Mapped[str] = mapped_column(String(63), default="")
    name: Mapped[str] = mapped_column(String(200), default="")
    acs: Mapped[list] = mapped_column(JSON, default=list)
    slo_url: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    certificate: Mapped[str | None] = mapped_column(Text, nullable=True)
    nameid_format: Mapped[str] = mapped_column(String(200))
    attributes: Mapped[dict] = mapped_column(JSON, default=dict)
    sign_assertion: Mapped[bool] = mapped_column(Boolean, default=True)
    sign_response: Mapped[bool] = mapped_column(Boolean, default=False)
    require_signed_requests: Mapped[bool] = mapped_column(Boolean, default=False)
    require_mfa: Mapped[bool] = mapped_column(Boolean, default=False)
    idp_initiated: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
