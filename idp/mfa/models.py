"""Second-factor enrolments. Secrets are stored encrypted (TOTP) or hashed (backup codes), never in clear."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, String, Text, text
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
