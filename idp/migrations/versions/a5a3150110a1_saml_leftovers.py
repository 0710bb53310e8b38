"""SAML: encryption, IdP-initiated SSO, rollover, SLO

Revision ID: a5a3150110a1
Revises: 9c1d0e5256a1
Create Date: 2026-11-28 11:20:00
"""

from alembic import op  # noqa: F401
import sqlalchemy as sa  # noqa: F401
import idp.models  # noqa: F401


revision = 'a5a3150110a1'
down_revision = '9c1d0e5256a1'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
