"""Tables of the downstream OpenID Connect provider: clients, signing keys, codes, tokens."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint, false, true
from sqlalchemy.orm import Mapped, mapped_column

from idp.db import Base
from idp.models import UTCDateTime, new_id, utcnow


class OidcClient(Base):
    """A downstream app (``apps`` entry with ``protocol: oidc``). The secret is stored only as its SHA-256."""

    __tablename__ = "oidc_clients"
    __table_args__ = (UniqueConstraint("workspace_id", "client_id", name="uq_oidc_clients_workspace_client"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"), index=True)
    client_id: Mapped[str] = mapped_column(String(128))
    slug: Mapped[str] = mapped_column(String(63), default="")
    name: Mapped[str] = mapped_column(String(200), default="")
    secret_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    token_endpoint_auth_method: Mapped[str] = mapped_column(String(40), default="none")
    redirect_uris: Mapped[list] = mapped_column(JSON, default=list)
    post_logout_redirect_uris: Mapped[list] = mapped_column(JSON, default=list)
    backchannel_logout_uri: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    grant_types: Mapped[list] = mapped_column(JSON, default=list)
    scopes: Mapped[list] = mapped_column(JSON, default=list)
    require_mfa: Mapped[bool] = mapped_column(Boolean, default=False)
    require_phishing_resistant_mfa: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # the ID token's signing algorithm (OIDC Dynamic Client Registration's metadata name): RS256 or ES256
    id_token_signed_response_alg: Mapped[str] = mapped_column(String(10), default="RS256", server_default="RS256")
    # "api" when the admin API or console registered the client (or last changed a URL idhub calls): its
    # backchannel_logout_uri and jwks_uri then go through idp.netfetch's SSRF checks. NULL: the config file.
    registered_via: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # Who may use the app: NULL everyone in the workspace; a list of group names only their members ([]: nobody).
    assigned_groups: Mapped[list | None] = mapped_column(JSON, nullable=True)
    # The launcher (idp.launcher): listed or not, the tile's text, the place in the config file's apps list (NULL:
    # registered over the API, after them), and where the tile opens (OIDC Core 4, Third-Party Initiated Login).
    show_in_launcher: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    description: Mapped[str | None] = mapped_column(String(300), nullable=True)
    launcher_position: Mapped[int | None] = mapped_column(Integer, nullable=True)
    initiate_login_uri: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class OidcClientJwks(Base):
    """The public keys of a ``private_key_jwt`` client (RFC 7523): an inline JWKS or the URL it is fetched from.

    A table of its own (not columns of ``oidc_clients``): only clients that use private_key_jwt touch it."""

    __tablename__ = "oidc_client_jwks"
    client_pk: Mapped[str] = mapped_column(ForeignKey("oidc_clients.id", ondelete="CASCADE"), primary_key=True)
    jwks: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    jwks_uri: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class OidcKey(Base):
    """A signing key of a workspace. ``private_enc`` is the PEM private key sealed with SecretBox("oidc-keys").

    A key signs until ``retired_at``; it stays in the JWKS until ``expires_at`` (the rotation overlap).
    """

    __tablename__ = "oidc_keys"
    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"), index=True)
    alg: Mapped[str] = mapped_column(String(10))
    public_jwk: Mapped[dict] = mapped_column(JSON)
    private_enc: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class OidcCode(Base):
    """An authorization code: 256 random bits, stored as SHA-256, single use (``used_at``), 60 seconds."""

    __tablename__ = "oidc_codes"
    code_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"), index=True)
    client_id: Mapped[str] = mapped_column(String(128))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    session_id: Mapped[str] = mapped_column(String(64))
    redirect_uri: Mapped[str] = mapped_column(String(2048))
    scope: Mapped[str] = mapped_column(String(1000), default="")
    nonce: Mapped[str | None] = mapped_column(String(512), nullable=True)
    code_challenge: Mapped[str] = mapped_column(String(128))
    code_challenge_method: Mapped[str] = mapped_column(String(10), default="S256")
    auth_time: Mapped[datetime] = mapped_column(UTCDateTime())
    amr: Mapped[list] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    def get_redirect_uri(self) -> str:  # authlib's AuthorizationCodeMixin
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope


class OidcRefreshToken(Base):
    """An opaque refresh token (stored as SHA-256). Rotation: each use marks it used and issues the next one of
    the same ``family_id``; presenting a used one again revokes the whole family."""

    __tablename__ = "oidc_refresh_tokens"
    __table_args__ = (Index("ix_oidc_refresh_tokens_family", "family_id"),
                      Index("ix_oidc_refresh_tokens_user", "user_id"))
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    family_id: Mapped[str] = mapped_column(String(64))  # the hash of the code that started the grant
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"), index=True)
    client_id: Mapped[str] = mapped_column(String(128))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    session_id: Mapped[str] = mapped_column(String(64), index=True)
    scope: Mapped[str] = mapped_column(String(1000), default="")
    auth_time: Mapped[datetime] = mapped_column(UTCDateTime())
    amr: Mapped[list] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # the token response of this token's rotation, AES-GCM encrypted under a key derived from the token itself
    # (never readable without it): a retry within the grace window gets the same answer
    retry_answer: Mapped[str | None] = mapped_column(Text, nullable=True)


class OidcAccessToken(Base):
    """The ``jti`` of every JWT access token issued, so that it can be revoked and introspected.

    ``family_id`` is the grant it belongs to (the code's hash for the first issue, then the refresh family)."""

    __tablename__ = "oidc_access_tokens"
    __table_args__ = (Index("ix_oidc_access_tokens_user", "user_id"),)
    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    family_id: Mapped[str] = mapped_column(String(64), index=True)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"), index=True)
    client_id: Mapped[str] = mapped_column(String(128))
    user_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    session_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    scope: Mapped[str] = mapped_column(String(1000), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class OidcSessionClient(Base):
    """An app that took part in an idhub session: it redeemed a code of that session (and so holds its ``sid``).

    Back-channel logout reads these when the session ends (tokens are no guide: access tokens are purged minutes
    after they expire, and an app may hold only an ID token or a refresh token); the rows go with the session
    (``oidc.backchannel``) or, for a session gone without its end listeners running, with the purge."""

    __tablename__ = "oidc_session_clients"
    __table_args__ = (UniqueConstraint("session_id", "client_id", name="uq_oidc_session_clients_session_client"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"), index=True)
    session_id: Mapped[str] = mapped_column(String(64))
    client_id: Mapped[str] = mapped_column(String(128))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
