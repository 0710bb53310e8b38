"""Second-factor enrolments. Secrets are stored encrypted (TOTP) or hashed (backup codes), never in clear."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, ForeignKey, LargeBinary, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from idp.db import Base
from idp.models import UTCDateTime, new_id, utcnow


class MfaTotp(Base):
    """An authenticator app. Active once ``confirmed_at`` is set; ``pending_secret_enc`` while (re-)enrolling."""

    __tablename__ = "mfa_totp"
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    # SecretBox tokens; NULL until the first enrolment is confirmed
    secret_enc: Mapped[str | None] = mapped_column(Text, nullable=True)
    pending_secret_enc: Mapped[str | None] = mapped_column(Text, nullable=True)
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # the last accepted RFC 6238 time step: a code is accepted only for a greater step (no replay)
    last_step: Mapped[int] = mapped_column(BigInteger, default=-1, server_default=text("-1"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class MfaPhone(Base):
    """A phone number for SMS codes (E.164). Active once ``verified_at`` is set; ``pending_phone`` while changing."""

    __tablename__ = "mfa_phones"
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    phone: Mapped[str | None] = mapped_column(String(32), nullable=True)  # NULL until the first verification
    pending_phone: Mapped[str | None] = mapped_column(String(32), nullable=True)
    verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class BackupCode(Base):
    """One single-use backup code, stored as an HMAC-SHA256 (hex); ``used_at`` set when redeemed."""

    __tablename__ = "mfa_backup_codes"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class WebAuthnCredential(Base):
    """A passkey or security key (WebAuthn). ``credential_id`` (base64url) is unique across the hub: a credential
    belongs to one user of one workspace. Only the public key is stored; ``sign_count`` is the authenticator's
    last signature counter (a counter that does not grow means a cloned authenticator, unless both are 0)."""

    __tablename__ = "mfa_webauthn_credentials"
    __table_args__ = (UniqueConstraint("credential_id", name="uq_mfa_webauthn_credential_id"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"), index=True)
    credential_id: Mapped[str] = mapped_column(String(1400))
    public_key: Mapped[bytes] = mapped_column(LargeBinary)
    sign_count: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    name: Mapped[str] = mapped_column(String(64))
    aaguid: Mapped[str] = mapped_column(String(36), default="")
    transports: Mapped[str] = mapped_column(String(200), default="")
    discoverable: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    backed_up: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
