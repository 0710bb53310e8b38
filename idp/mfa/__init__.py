"""Two-factor authentication: authenticator apps (TOTP), SMS codes and backup codes. Plain Python, no Flask."""

from idp.mfa.crypto import SecretBox
from idp.mfa.service import Enrolled, MfaError, MfaService, SendResult, TotpSetup

__all__ = ["Enrolled", "MfaError", "MfaService", "SecretBox", "SendResult", "TotpSetup"]
