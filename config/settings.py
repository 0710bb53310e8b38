"""Settings: defaults, then ``IDHUB_*`` environment variables, then ``*_FILE`` secrets.

Plain Python, no Flask. ``load_settings()`` fails fast with a clear message on a malformed value.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent


SCIM_MAX_BODY_DEFAULT = 1024 * 1024
SCIM_MAX_BODY_RANGE = (4 * 1024, 64 * 1024 * 1024)  # a SCIM user needs a few KiB; the whole body is held in memory


LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


class SettingsError(ValueError):
    """A configuration value is missing or malformed."""


@dataclass(frozen=True)
class Settings:
    database_url: str = "sqlite:///instance/idhub.db"
    redis_url: str | None = None
    base_url: str = "http://127.0.0.1:5000"
    secret_key: str = ""
    # Earlier master secrets, newest first, while a rotation is under way (IDHUB_SECRET_KEY_PREVIOUS): data made
    # with them keeps working; everything new uses secret_key. `idhub secrets rotate` moves the rest over.
    previous_secret_keys: tuple[str, ...] = ()
    smtp_url: str | None = None
    sms_webhook_url: str | None = None
    outbox_dir: str = "instance/outbox"
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    cookie_secure: bool = True
    mail_from: str = "idhub <no-reply@idhub.local>"
    geoip_db: str | None = None
    log_level: str = "INFO"
    # /metrics: who may scrape it. Loopback and private networks by default (the Internet, seen through a trusted
    # proxy's X-Forwarded-For, is refused); a bearer token lets a scraper in from anywhere.
    metrics_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = tuple(
        ipaddress.ip_network(n) for n in ("127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
                                          "fc00::/7"))
    metrics_token: str | None = None
    # Hub-wide session defaults; a workspace's policy can only make them stricter.
    session_idle_timeout: int = 30 * 24 * 3600
    session_max_lifetime: int = 90 * 24 * 3600
    # `idhub serve` runs `idhub maintenance` (expired rows, audit retention, metadata refresh) this often; 0: never
    maintenance_interval: int = 3600
    # The largest SCIM request body (bytes), /Bulk included; a larger one is answered 413.
    scim_max_body: int = SCIM_MAX_BODY_DEFAULT
    # Audit streaming (idp/auditstream.py): a SIEM webhook with its shared secret, JSON lines to a file or "-"
    audit_webhook_url: str | None = None
    audit_webhook_secret: str | None = None
    audit_stream_file: str | None = None
    node_name: str | None = None
    # Fleet: database connections per worker process (pool + overflow), Redis timeouts and circuit breaker, how
    # stale a node's cached session may be, the refresh-token retry grace.
    db_pool_size: int = 5
    db_max_overflow: int = 5
    db_pool_timeout: int = 10
    db_pool_recycle: int = 1800
    redis_timeout: float = 0.5
    redis_retry_interval: float = 5.0
    session_recheck: float = 1.0
    oidc_refresh_grace: int = 10
    extra: dict = field(default_factory=dict)

    def with_(self, **kw) -> Settings:
        return replace(self, **kw)


def _read(env: dict, name: str) -> str | None:
    """The value of ``name``, or the contents of the file named by ``name_FILE``."""
    if env.get(name):
        return env[name]
    path = env.get(name + "_FILE")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise SettingsError(f"{name}_FILE: cannot read {path}: {exc.strerror}") from exc
    return None


def _bool(name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}: expected true or false, got {value!r}")


def parse_cidrs(name: str, value: str) -> tuple:
    nets = []
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            nets.append(ipaddress.ip_network(part, strict=True))
        except ValueError as exc:
            raise SettingsError(f"{name}: {part!r} is not a valid CIDR ({exc})") from exc
    return tuple(nets)


def _url(name: str, value: str, schemes: tuple[str, ...]) -> str:
    parts = urlsplit(value)
    if parts.scheme not in schemes or not parts.netloc:
        raise SettingsError(f"{name}: expected a {'/'.join(schemes)} URL, got {value!r}")
    return value


def load_settings(env: dict | None = None, **overrides) -> Settings:
    env = dict(os.environ if env is None else env)
    kw: dict = {}
    if v := _read(env, "IDHUB_DATABASE_URL"):
        kw["database_url"] = v
    if v := _read(env, "IDHUB_REDIS_URL"):
        kw["redis_url"] = _url("IDHUB_REDIS_URL", v, ("redis", "rediss", "unix"))
    if v := _read(env, "IDHUB_BASE_URL"):
        kw["base_url"] = _url("IDHUB_BASE_URL", v, ("http", "https")).rstrip("/")
    if v := _read(env, "IDHUB_SECRET_KEY"):
        kw["secret_key"] = v
    if v := _read(env, "IDHUB_SECRET_KEY_PREVIOUS"):
        previous = tuple(p.strip() for p in v.replace("\n", ",").split(",") if p.strip())
        if any(len(p) < 32 for p in previous):
            raise SettingsError("IDHUB_SECRET_KEY_PREVIOUS: every key must be at least 32 characters")
        kw["previous_secret_keys"] = previous
    if v := _read(env, "IDHUB_SMTP_URL"):
        kw["smtp_url"] = _url("IDHUB_SMTP_URL", v, ("smtp", "smtps"))
    if v := _read(env, "IDHUB_SMS_WEBHOOK_URL"):
        kw["sms_webhook_url"] = _url("IDHUB_SMS_WEBHOOK_URL", v, ("http", "https"))
    if v := _read(env, "IDHUB_OUTBOX_DIR"):
        kw["outbox_dir"] = v
    if v := _read(env, "IDHUB_TRUSTED_PROXIES"):
        kw["trusted_proxies"] = parse_cidrs("IDHUB_TRUSTED_PROXIES", v)
    if v := _read(env, "IDHUB_COOKIE_SECURE"):
        kw["cookie_secure"] = _bool("IDHUB_COOKIE_SECURE", v)
    if v := _read(env, "IDHUB_MAIL_FROM"):
        kw["mail_from"] = v
    if v := _read(env, "IDHUB_GEOIP_DB"):
        kw["geoip_db"] = v
    if v := _read(env, "IDHUB_METRICS_ALLOW"):
        kw["metrics_networks"] = () if v.strip() == "none" else parse_cidrs("IDHUB_METRICS_ALLOW", v)
    if v := env.get("IDHUB_OUTBOUND_ALLOW_CIDRS"):  # read by idp.netfetch at every fetch; checked here to fail fast
        parse_cidrs("IDHUB_OUTBOUND_ALLOW_CIDRS", v)
    if v := _read(env, "IDHUB_METRICS_TOKEN"):
        if len(v) < 32:
            raise SettingsError("IDHUB_METRICS_TOKEN: must be at least 32 characters")
        kw["metrics_token"] = v
    if v := _read(env, "IDHUB_LOG_LEVEL"):
        kw["log_level"] = v.upper()
    if v := _read(env, "IDHUB_SCIM_MAX_BODY"):
        low, high = SCIM_MAX_BODY_RANGE
        if not (v.strip().isascii() and v.strip().isdigit()) or not low <= int(v) <= high:
            raise SettingsError(f"IDHUB_SCIM_MAX_BODY: bytes between {low} and {high}")
        kw["scim_max_body"] = int(v)
    if v := _read(env, "IDHUB_MAINTENANCE_INTERVAL"):
        if not v.strip().isdigit() or not (int(v) == 0 or 60 <= int(v) <= 7 * 24 * 3600):
            raise SettingsError("IDHUB_MAINTENANCE_INTERVAL: seconds between 60 and 604800, or 0 to turn it off")
        kw["maintenance_interval"] = int(v)
    if v := _read(env, "IDHUB_AUDIT_WEBHOOK_URL"):
        u = urlsplit(v)
        if not (u.scheme == "https" and u.hostname) and not (u.scheme == "http" and u.hostname in LOOPBACK_HOSTS):
            raise SettingsError("IDHUB_AUDIT_WEBHOOK_URL: must be an https URL (plain http only to 127.0.0.1, ::1 or "
                                "localhost, a forwarder on this host)")
        secret = _read(env, "IDHUB_AUDIT_WEBHOOK_SECRET")
        if not secret or len(secret) < 32:
            raise SettingsError("IDHUB_AUDIT_WEBHOOK_SECRET: required with IDHUB_AUDIT_WEBHOOK_URL, at least 32 "
                                "characters (the receiver checks each batch's signature with it)")
        kw["audit_webhook_url"], kw["audit_webhook_secret"] = v, secret
    if v := _read(env, "IDHUB_AUDIT_STREAM_FILE"):
        kw["audit_stream_file"] = v
    if v := _read(env, "IDHUB_NODE_NAME"):
        kw["node_name"] = v
    kw.update(_fleet_settings(env))
    kw.update(overrides)
    s = Settings(**kw)
    if not s.secret_key:
        s = s.with_(secret_key=_instance_secret())
    if len(s.secret_key) < 32:
        raise SettingsError("IDHUB_SECRET_KEY: must be at least 32 characters")
    if s.secret_key in s.previous_secret_keys:
        s = s.with_(previous_secret_keys=tuple(p for p in s.previous_secret_keys if p != s.secret_key))
    return s


# name: (setting, type, low, high)
_FLEET = {
    "IDHUB_DB_POOL_SIZE": ("db_pool_size", int, 1, 200),
    "IDHUB_DB_MAX_OVERFLOW": ("db_max_overflow", int, 0, 200),
    "IDHUB_DB_POOL_TIMEOUT": ("db_pool_timeout", int, 1, 300),
    "IDHUB_DB_POOL_RECYCLE": ("db_pool_recycle", int, 0, 86400),
    "IDHUB_REDIS_TIMEOUT": ("redis_timeout", float, 0.05, 10.0),
    "IDHUB_REDIS_RETRY_INTERVAL": ("redis_retry_interval", float, 0.5, 300.0),
    "IDHUB_SESSION_RECHECK": ("session_recheck", float, 0.1, 30.0),
    "IDHUB_OIDC_REFRESH_GRACE": ("oidc_refresh_grace", int, 0, 60),
}


def _fleet_settings(env: dict) -> dict:
    kw = {}
    for name, (attr, kind, low, high) in _FLEET.items():
        v = _read(env, name)
        if v is None:
            continue
        try:
            value = kind(v.strip())
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise SettingsError(f"{name}: expected {'a whole number' if kind is int else 'a number'} "
                                f"between {low} and {high}, got {v!r}")
        kw[attr] = value
    return kw


def _instance_secret() -> str:
    """The secret kept under ``instance/`` for the demo; created on first use (mode 0600)."""
    path = Path("instance") / "secret_key"
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key)
    return key
