"""Tables of the SAML identity provider: the workspace's signing key and its service providers."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, ForeignKey, Integer, String, Text, UniqueConstraint, false, true
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
    # Key rollover: the staged next key is published in metadata at once, signs from ``next_active_at`` on, and
    # replaces the current key (which then leaves the metadata) ``ROLLOVER_RETIRE`` later.
    next_certificate: Mapped[str | None] = mapped_column(Text, nullable=True)
    next_private_enc: Mapped[str | None] = mapped_column(Text, nullable=True)
    next_active_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # The key of persistent (pairwise) NameIDs: 64 random hex digits, stored plain (it grants no access; sealing it
    # with IDHUB_SECRET_KEY would tie the NameIDs to that key again). NULL only on rows from before it existed,
    # filled once by ``SamlKeys.nameid_salt`` with the value the NameIDs issued so far were made with.
    nameid_salt: Mapped[str | None] = mapped_column(Text, nullable=True)


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
    require_phishing_resistant_mfa: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    idp_initiated: Mapped[bool] = mapped_column(Boolean, default=False)
    # How our LogoutRequests and LogoutResponses reach the SP's SingleLogoutService (HTTP-Redirect or HTTP-POST).
    slo_binding: Mapped[str | None] = mapped_column(String(100), nullable=True)
    # The SP's SOAP SingleLogoutService: back-channel LogoutRequests for sessions ended without their browser.
    slo_soap_url: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    # The SP's encryption certificate (metadata ``use="encryption"`` or config) and whether assertions are encrypted.
    encryption_certificate: Mapped[str | None] = mapped_column(Text, nullable=True)
    encrypt_assertions: Mapped[bool] = mapped_column(Boolean, default=False)
    # Registered by ``metadata_url``: where the metadata comes from, when it was last fetched, and the config
    # entry it was applied with (so that a refresh applies the same options to the new metadata).
    metadata_url: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    metadata_fetched_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    app_settings: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    # Who may use the app: NULL everyone in the workspace; a list of group names only their members ([]: nobody).
    assigned_groups: Mapped[list | None] = mapped_column(JSON, nullable=True)
    # The launcher (idp.launcher): listed or not (a tile needs idp_initiated too), the tile's text, the place in
    # the config file's apps list (NULL: registered over the API, after them).
    show_in_launcher: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    description: Mapped[str | None] = mapped_column(String(300), nullable=True)
    launcher_position: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class SamlSessionParticipant(Base):
    """An SP that received an assertion in an idhub session (by the session's stored id, never the cookie): the
    NameID and SessionIndex it was given, so that Single Logout can name the session to it."""

    __tablename__ = "saml_session_participants"
    __table_args__ = (UniqueConstraint("session_id", "sp_id", name="uq_saml_participant_session_sp"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    session_id: Mapped[str] = mapped_column(String(64), index=True)
    sp_id: Mapped[str] = mapped_column(ForeignKey("saml_service_providers.id", ondelete="CASCADE"))
    name_id: Mapped[str] = mapped_column(Text)
    nameid_format: Mapped[str] = mapped_column(String(200))
    session_index: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
