"""OIDC: ES256 keys, jwks_uri, purge

Revision ID: 9c1d0e5256a1
Revises: 8a0d1c0ffee0
Create Date: 2026-11-28 11:20:00
"""

from alembic import op  # noqa: F401
import sqlalchemy as sa  # noqa: F401
import idp.models  # noqa: F401


revision = '9c1d0e5256a1'
down_revision = '8a0d1c0ffee0'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
