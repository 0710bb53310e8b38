"""Database schema management: Alembic migrations, run programmatically."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def import_all_models() -> None:
    """Every module that defines tables, so that ``Base.metadata`` is complete."""
    import admin.models  # noqa: F401
    import federation.models  # noqa: F401
    import idp.audit  # noqa: F401
    import idp.auditstream  # noqa: F401
    import idp.invalidation  # noqa: F401
    import idp.mfa.models  # noqa: F401
    import idp.models  # noqa: F401
    import idp.storage.sql  # noqa: F401
    import oidc.models  # noqa: F401
    import saml.models  # noqa: F401
    import scim.models  # noqa: F401


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////") and url != "sqlite:///:memory:":
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), revision)


def revision(url: str, message: str) -> None:
    command.revision(alembic_config(url), message=message, autogenerate=True)
