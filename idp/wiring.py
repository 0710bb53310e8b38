"""The hub wired together from settings: engine, stores, mailer, audit log, 2FA. Plain Python (no Flask): the app
factory (``idp.app``), the command line and tests without a web app all start here."""

from __future__ import annotations

from config.settings import Settings
from idp.crypto import derive_key, retained_pairs, secret_keys
from idp.db import make_engine, make_sessionmaker
from idp.hub import Hub
from idp.passwords import Hasher


def build_hub(settings: Settings, *, hasher: Hasher | None = None) -> Hub:
    from idp.audit import AuditLog
    from idp.devices import GeoLocator, describe_user_agent, fingerprint, location_fingerprint
    from idp.mail import make_mailer
    from idp.mfa.crypto import SecretBox
    from idp.mfa.passkeys import PasskeyService
    from idp.mfa.service import MfaService
    from idp.sms import make_sms_sender
    from idp.storage.factory import build_stores

    engine = make_engine(settings.database_url, pool_size=settings.db_pool_size,
                         max_overflow=settings.db_max_overflow, pool_timeout=settings.db_pool_timeout,
                         pool_recycle=settings.db_pool_recycle)
    sm = make_sessionmaker(engine)
    stores = build_stores(settings, sm)
    hub = Hub(
        settings,
        sm,
        stores,
        hasher or Hasher(),
        AuditLog(sm, secrets=secret_keys(settings),
                 retained=lambda: retained_pairs(sm, settings, "audit-chain", "audit-checkpoint-ed25519")),
        make_mailer(settings),
        GeoLocator(settings.geoip_db),
        describe_user_agent,
        (fingerprint, location_fingerprint),
    )
    hub.mfa = MfaService(sm, SecretBox(secret_keys(settings), "mfa-totp"), stores.one_time, stores.throttle,
                         make_sms_sender(settings), hmac_key=derive_key(settings.secret_key, "mfa-backup-codes"),
                         clock=lambda: hub.clock(), hmac_keys=lambda: hub.keyring.hmac_keys("mfa-backup-codes"),
                         passkeys=PasskeyService(sm, stores.one_time, settings.base_url, clock=lambda: hub.clock()))
    hub.engine = engine
    return hub
